"""Building blocks of the ADM U-Net (guided-diffusion layer structure, NHWC).

Every module mirrors one guided-diffusion module so that a torch ``state_dict`` converts by renaming
(see ``cdm/models/convert.py``). Conventions (``shared/specs/ADM.md``):

* GroupNorm: 32 contiguous channel groups, ``eps = 1e-5``, statistics and affine in float32, result
  cast back to the input (compute) dtype.
* Convs and Dense layers compute in ``dtype`` (e.g. bfloat16) and keep float32 parameters.
* Attention softmax runs in float32 (``jax.nn.dot_product_attention`` promotes logits).

Submodule names (used by the converter):

=================  ===============================  ==================================
module             cdm name                          guided-diffusion key
=================  ===============================  ==================================
ResBlock           ``in_norm`` / ``in_conv``         ``in_layers.0`` / ``in_layers.2``
                   ``emb_proj``                      ``emb_layers.1``
                   ``out_norm`` / ``out_conv``       ``out_layers.0`` / ``out_layers.3``
                   ``skip_connection``               ``skip_connection``
AttentionBlock     ``norm`` / ``qkv`` / ``proj_out``  same
Downsample         ``op``                            ``op``
Upsample           ``conv``                          ``conv``
=================  ===============================  ==================================
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

NUM_GROUPS = 32  # GroupNorm32 of guided-diffusion.
NORM_EPS = 1e-5  # torch.nn.GroupNorm default.


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """ADM sinusoidal embedding of (possibly fractional) timesteps.

  ``freqs[i] = exp(-ln(max_period) * i / half)`` for ``i < half = dim // 2`` and the result is
  ``[cos(t * freqs), sin(t * freqs)]`` (cos first); an odd ``dim`` gets one zero column appended.

  Args:
    t: float or int array of shape ``(B,)``.
    dim: embedding width.
    max_period: controls the lowest frequency.

  Returns:
    float32 array of shape ``(B, dim)``.
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
  return emb


class GroupNorm32(nn.Module):
  """guided-diffusion's GroupNorm32 for channels-last input.

  32 contiguous channel groups (channel c in group ``c // (C / 32)``), statistics per sample over
  the spatial axes and the group's channels, biased variance, ``eps = 1e-5``, affine ``scale`` /
  ``bias``. Computed in float32; the result is cast back to the input dtype.
  """

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    if c % NUM_GROUPS:
      raise ValueError(f"GroupNorm32 needs a multiple of {NUM_GROUPS} channels, got {c}")
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    g = x.astype(jnp.float32).reshape(x.shape[:-1] + (NUM_GROUPS, c // NUM_GROUPS))
    axes = tuple(range(1, g.ndim - 2)) + (g.ndim - 1,)
    mean = g.mean(axes, keepdims=True)
    centered = g - mean
    var = jnp.square(centered).mean(axes, keepdims=True)
    y = (centered * jax.lax.rsqrt(var + NORM_EPS)).reshape(x.shape)
    return (y * scale + bias).astype(x.dtype)


CONV_IMPLS = ("xla", "im2col")


def conv_im2col(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                dimension_numbers=None, feature_group_count=1, precision=None, **unused):
  """``lax.conv_general_dilated`` for NHWC x HWIO as patches + one matmul (im2col).

  The forward pass and both gradients become ``dot_general`` (plus pads, slices and concats), which
  XLA:CPU runs at matmul speed, while its native convolution gradients are slow. Same parameters and
  results (to float rounding) as the convolution. No dilation, no feature groups.
  """
  del unused
  if any(d != 1 for d in tuple(lhs_dilation or ()) + tuple(rhs_dilation or ())):
    raise ValueError("conv_im2col: dilation is not supported")
  if feature_group_count != 1:
    raise ValueError("conv_im2col: feature groups are not supported")
  nhwc = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
  if jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers or nhwc) != nhwc:
    raise ValueError(f"conv_im2col: expected NHWC / HWIO / NHWC, got {dimension_numbers}")
  kh, kw, ci, co = rhs.shape
  if isinstance(padding, str):  # "SAME" / "VALID"
    padding = jax.lax.padtype_to_pads(lhs.shape[1:3], (kh, kw), window_strides, padding)
  (pt, pb), (pl, pr) = padding
  x = jnp.pad(lhs, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  b, h, w, _ = x.shape
  sh, sw = window_strides
  ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
  cols = [x[:, i:i + (ho - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw, :]
          for i in range(kh) for j in range(kw)]
  patches = cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)  # (i, j, c) order
  out = jax.lax.dot_general(patches.reshape(b * ho * wo, kh * kw * ci),
                            rhs.reshape(kh * kw * ci, co), (((1,), (0,)), ((), ())),
                            precision=precision)
  return out.reshape(b, ho, wo, co)


def conv_general_dilated_fn(impl: str = "xla"):
  """The convolution primitive for ``nn.Conv``: None (XLA's) or :func:`conv_im2col`."""
  if impl not in CONV_IMPLS:
    raise ValueError(f"model.conv_impl={impl!r}: expected one of {CONV_IMPLS}")
  return conv_im2col if impl == "im2col" else None


def conv3x3(features: int, dtype: Dtype, name: str, zero_init: bool = False,
            strides: int = 1, impl: str = "xla") -> nn.Conv:
  """3x3 convolution with torch-style symmetric padding 1 (also for stride 2).

  ``impl`` selects how it is computed (:func:`conv_general_dilated_fn`); parameters are the same.
  """
  kwargs = {}
  if zero_init:
    kwargs = dict(kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros)
  return nn.Conv(features, (3, 3), strides=(strides, strides), padding=((1, 1), (1, 1)),
                 dtype=dtype, param_dtype=jnp.float32, name=name,
                 conv_general_dilated=conv_general_dilated_fn(impl), **kwargs)


def avg_pool2x(x: jax.Array) -> jax.Array:
  """Mean over non-overlapping 2x2 blocks (``AvgPool2d(2, 2)``) for NHWC input."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def nearest_up2x(x: jax.Array) -> jax.Array:
  """Nearest-neighbour 2x upsampling (``F.interpolate(scale_factor=2, mode="nearest")``).

  A broadcast + reshape rather than two ``jnp.repeat``s: the same values, and the gradient is a
  plain sum over the two broadcast axes.
  """
  b, h, w, c = x.shape
  return jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)


class Downsample(nn.Module):
  """Conv downsampling (``resblock_updown=False``): 3x3 conv, stride 2, padding 1.

  Attributes:
    channels: output channels (equal to the input channels in the U-Net).
    dtype: compute dtype.
  """
  channels: int
  dtype: Dtype = jnp.float32
  conv_impl: str = "xla"  # see conv3x3

  @nn.compact
  def __call__(self, x: jax.Array, emb: jax.Array | None = None) -> jax.Array:
    del emb
    return conv3x3(self.channels, self.dtype, "op", strides=2, impl=self.conv_impl)(x)


class Upsample(nn.Module):
  """Conv upsampling (``resblock_updown=False``): nearest 2x, then a 3x3 conv.

  Attributes:
    channels: output channels.
    dtype: compute dtype.
  """
  channels: int
  dtype: Dtype = jnp.float32
  conv_impl: str = "xla"  # see conv3x3

  @nn.compact
  def __call__(self, x: jax.Array, emb: jax.Array | None = None) -> jax.Array:
    del emb
    return conv3x3(self.channels, self.dtype, "conv", impl=self.conv_impl)(nearest_up2x(x))


class ResBlock(nn.Module):
  """ADM residual block with timestep(-and-class) conditioning.

  ``h = conv(resample(SiLU(GN(x))))``; then either scale-shift
  (``GN(h) * (1 + scale) + shift``, first half of the projected embedding is the scale) or an additive
  embedding; then ``conv(Dropout(SiLU(.)))`` (zero-initialised) and ``skip(resample(x)) + h``.

  Attributes:
    out_channels: output channels; a 1x1 conv skip is used when they differ from the input's.
    dropout: dropout rate before the last conv.
    use_scale_shift_norm: adaptive group norm (FiLM from the embedding) instead of an additive one.
    up: nearest 2x upsampling inside the block (BigGAN-style).
    down: 2x2 average-pool downsampling inside the block.
    deterministic: disables dropout (inference); when False a ``"dropout"`` rng is needed.
    dtype: compute dtype.
  """
  out_channels: int
  dropout: float = 0.0
  use_scale_shift_norm: bool = True
  up: bool = False
  down: bool = False
  deterministic: bool = True
  dtype: Dtype = jnp.float32
  conv_impl: str = "xla"  # how convolutions are computed (conv3x3); same parameters

  @nn.compact
  def __call__(self, x: jax.Array, emb: jax.Array) -> jax.Array:
    """Args: x (B, H, W, C) in the compute dtype; emb (B, E) float32. Returns (B, H', W', out)."""
    x = x.astype(self.dtype)
    h = nn.silu(GroupNorm32(name="in_norm")(x))
    if self.up:
      h, x = nearest_up2x(h), nearest_up2x(x)
    elif self.down:
      h, x = avg_pool2x(h), avg_pool2x(x)
    h = conv3x3(self.out_channels, self.dtype, "in_conv", impl=self.conv_impl)(h)

    width = 2 * self.out_channels if self.use_scale_shift_norm else self.out_channels
    e = nn.Dense(width, dtype=self.dtype, param_dtype=jnp.float32, name="emb_proj")(nn.silu(emb))
    e = e.astype(self.dtype)[:, None, None, :]
    out_norm = GroupNorm32(name="out_norm")
    if self.use_scale_shift_norm:
      scale, shift = jnp.split(e, 2, axis=-1)
      h = out_norm(h) * (1 + scale) + shift
    else:
      h = out_norm(h + e)
    h = nn.silu(h)
    h = nn.Dropout(self.dropout, deterministic=self.deterministic)(h)
    h = conv3x3(self.out_channels, self.dtype, "out_conv", zero_init=True,
                impl=self.conv_impl)(h)

    if x.shape[-1] != self.out_channels:
      x = nn.Conv(self.out_channels, (1, 1), dtype=self.dtype, param_dtype=jnp.float32,
                  conv_general_dilated=conv_general_dilated_fn(self.conv_impl),
                  name="skip_connection")(x)
    return x + h


class AttentionBlock(nn.Module):
  """Multi-head self-attention over the H*W tokens of a feature map, with a residual add.

  ``qkv = Dense(GN(x))`` (C -> 3C), softmax attention with scale ``1/sqrt(head_dim)``, ``proj_out``
  (zero-initialised), ``x + out``. Heads are ``C // num_head_channels`` when
  ``num_head_channels != -1``, otherwise ``num_heads``.

  Attributes:
    num_heads: heads when ``num_head_channels == -1``.
    num_head_channels: channels per head, or -1.
    use_new_attention_order: qkv channel layout. True (``QKVAttention``): ``[q | k | v]`` blocks of C
      channels, head h at ``[h*d, (h+1)*d)`` of each. False (``QKVAttentionLegacy``): head h owns
      channels ``[3hd, 3(h+1)d)`` holding its q, k, v.
    dtype: compute dtype (the softmax is always float32).
  """
  num_heads: int = 1
  num_head_channels: int = -1
  use_new_attention_order: bool = False
  dtype: Dtype = jnp.float32

  def heads(self, channels: int) -> int:
    """Number of heads for a block of ``channels`` channels."""
    if self.num_head_channels == -1:
      return self.num_heads
    return channels // self.num_head_channels

  @nn.compact
  def __call__(self, x: jax.Array, emb: jax.Array | None = None) -> jax.Array:
    """Args: x (B, H, W, C). Returns the same shape and dtype."""
    del emb
    x = x.astype(self.dtype)
    b, hh, ww, c = x.shape
    heads = self.heads(c)
    if heads < 1 or c % heads:
      raise ValueError(f"AttentionBlock: {c} channels do not split into {heads} heads; change "
                       "model.num_heads / model.num_head_channels")
    d = c // heads
    h = GroupNorm32(name="norm")(x).reshape(b, hh * ww, c)
    qkv = nn.Dense(3 * c, dtype=self.dtype, param_dtype=jnp.float32, name="qkv")(h)
    if self.use_new_attention_order:
      qkv = qkv.reshape(b, hh * ww, 3, heads, d)
      q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    else:
      qkv = qkv.reshape(b, hh * ww, heads, 3, d)
      q, k, v = qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]
    a = jax.nn.dot_product_attention(q, k, v)  # (B, T, heads, d); float32 softmax.
    a = a.reshape(b, hh * ww, c).astype(self.dtype)  # head-major channels.
    out = nn.Dense(c, dtype=self.dtype, param_dtype=jnp.float32, name="proj_out",
                   kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros)(a)
    return x + out.reshape(b, hh, ww, c)


def encoder_and_middle(h: jax.Array, emb: jax.Array, *, widths, num_res_blocks: int, attention_ds,
                       resblock_updown: bool, res, attn, downsample, record=None):
  """guided-diffusion's ``input_blocks[1:]`` and ``middle_block``, shared by the U-Net and the
  noisy classifier (``EncoderUNetModel``); call it inside a compact ``__call__``.

  Per level ``num_res_blocks`` x (ResBlock [+ attention where the downsampling factor is in
  ``attention_ds``]), then (except at the last level) a downsampling block; then ResBlock,
  attention, ResBlock. Module names are guided-diffusion's (``input_blocks_{i}_{j}``,
  ``middle_block_{k}``), so checkpoints convert one to one.

  Args:
    h: output of ``input_blocks_0`` (the first 3x3 conv).
    emb: the timestep (+ class / aug-level) embedding.
    widths: channels per level.
    num_res_blocks: ResBlocks per level.
    attention_ds: downsampling factors with attention.
    resblock_updown: downsample with a ``down=True`` ResBlock instead of ``downsample``.
    res: ``res(out_ch, name, down=False)`` -> a ResBlock module.
    attn: ``attn(name)`` -> an attention module.
    downsample: ``downsample(ch, name)`` -> a Downsample module.
    record: optional ``record(tag, h)`` called with each block's output (``input_blocks_{i}``,
      ``middle_block``), e.g. to sow intermediates.

  Returns:
    ``(h, outputs)``: the middle block's output and every input block's output after the first
    (the U-Net's skips are ``[h] + outputs``).
  """
  record = record or (lambda tag, value: None)
  outputs, idx, ds = [], 1, 1
  for level, width in enumerate(widths):
    for _ in range(num_res_blocks):
      h = res(width, f"input_blocks_{idx}_0")(h, emb)
      if ds in attention_ds:
        h = attn(f"input_blocks_{idx}_1")(h)
      record(f"input_blocks_{idx}", h)
      outputs.append(h)
      idx += 1
    if level != len(widths) - 1:
      name = f"input_blocks_{idx}_0"
      h = res(width, name, down=True)(h, emb) if resblock_updown else downsample(width, name)(h)
      record(f"input_blocks_{idx}", h)
      outputs.append(h)
      idx += 1
      ds *= 2
  h = res(widths[-1], "middle_block_0")(h, emb)
  h = attn("middle_block_1")(h)
  h = res(widths[-1], "middle_block_2")(h, emb)
  record("middle_block", h)
  return h, outputs
