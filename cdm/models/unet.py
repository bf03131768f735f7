"""The ADM U-Net used by every cdm stage (base and super-resolution), and its factory.

One Flax module covers guided-diffusion's ``UNetModel`` and ``SuperResModel``: an SR stage
(``low_res_size > 0``) resizes ``low_res`` to ``image_size`` and concatenates it after ``x_t`` along
channels. cdm additions: an optional embedding of the conditioning-augmentation level (added to the
time embedding, like the class embedding) and an optional reserved null class for classifier-free
guidance (id ``num_classes``).

Parameter tree (top level), mirroring the guided-diffusion ``state_dict``::

  time_embed_0, time_embed_2      Linear(ch -> 4ch), SiLU, Linear(4ch -> 4ch)
  aug_embed_0, aug_embed_2        same for the augmentation level (cdm only)
  label_emb                       Embed(num_classes [+1 null], 4ch)
  input_blocks_{i}_{j}            input_blocks.i.j (j: position in the TimestepEmbedSequential)
  middle_block_{j}                middle_block.j
  output_blocks_{i}_{j}           output_blocks.i.j
  out_0, out_2                    out.0 (GroupNorm), out.2 (conv)

Intermediate activations are sown into the ``"intermediates"`` collection under the top-level block
names (``input_blocks_3``, ``middle_block``, ``output_blocks_0``, ``emb``): call ``apply`` with
``mutable=["intermediates"]`` to compare them with a reference.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cdm.models import layers

Dtype = Any

LOW_RES_METHODS = {"bilinear": "bilinear", "bicubic": "cubic"}


class UNet(nn.Module):
  """ADM U-Net: NHWC ``x_t`` in [-1, 1] and float timesteps -> eps (and variance values).

  Attributes:
    model_channels: base width ``ch`` (guided-diffusion ``num_channels``).
    channel_mult: width multiplier per resolution level; widths are ``int(mult * ch)`` (floats such as
      0.5 are allowed). Each level but the last ends with a 2x downsampling.
    num_res_blocks: residual blocks per level (the decoder uses one more per level).
    attention_resolutions: feature-map sizes in pixels at which to attend (converted to
      ``ds = image_size // res``); sizes the network never reaches are ignored with a warning. The
      middle block always attends.
    num_heads: attention heads when ``num_head_channels == -1``.
    num_head_channels: channels per head (``heads = C // num_head_channels``), or -1.
    num_heads_upsample: decoder heads when ``num_head_channels == -1``; -1 = ``num_heads``.
    dropout: dropout rate inside residual blocks (active with ``train=True``).
    use_scale_shift_norm: adaptive group norm (scale, shift from the embedding).
    resblock_updown: BigGAN-style residual up/down blocks; False uses conv Downsample/Upsample.
    num_classes: number of classes; None = unconditional.
    use_null_class: reserve class id ``num_classes`` as the "no label" class (classifier-free
      guidance); the embedding table then has ``num_classes + 1`` rows.
    learn_sigma: output ``2 * in_channels`` channels (eps first, then variance values).
    in_channels: image channels.
    image_size: output (and ``x_t``) resolution.
    low_res_size: resolution of the low-res conditioning input; 0 = base (unconditional on images).
    low_res_upsample: ``"bilinear"`` (torch ``align_corners=False``, as ``SuperResModel``) or
      ``"bicubic"`` (Keys cubic, a = -0.5, as ``jax.image.resize``).
    aug_level_embedding: embed the conditioning-augmentation level ``aug_level`` (SR only).
    use_new_attention_order: qkv layout, True = ``QKVAttention``, False = ``QKVAttentionLegacy``.
    dtype: compute dtype of convs, dense layers and activations; parameters, GroupNorm statistics,
      the softmax, the embeddings and the output head stay float32. The output is always float32.
    remat: rematerialise residual and attention blocks in the backward pass (saves memory).
    conv_impl: how convolutions are computed, ``layers.CONV_IMPLS`` (``"im2col"``: patches + matmul;
      ``"auto"``: im2col on CPU, XLA's convolution elsewhere); the parameters do not depend on it.
  """
  model_channels: int = 32
  channel_mult: Sequence[float] = (1, 2)
  num_res_blocks: int = 1
  attention_resolutions: Sequence[int] = (8,)
  num_heads: int = 4
  num_head_channels: int = -1
  num_heads_upsample: int = -1
  dropout: float = 0.0
  use_scale_shift_norm: bool = True
  resblock_updown: bool = True
  num_classes: Optional[int] = None
  use_null_class: bool = False
  learn_sigma: bool = False
  in_channels: int = 3
  image_size: int = 16
  low_res_size: int = 0
  low_res_upsample: str = "bilinear"
  aug_level_embedding: bool = False
  use_new_attention_order: bool = False
  dtype: Dtype = jnp.float32
  remat: bool = False
  conv_impl: str = "xla"

  # ------------------------------------------------------------------ static properties
  @property
  def out_channels(self) -> int:
    """Output channels: ``2 * in_channels`` with ``learn_sigma``, else ``in_channels``."""
    return self.in_channels * (2 if self.learn_sigma else 1)

  @property
  def is_super_resolution(self) -> bool:
    """Whether the model takes a ``low_res`` input."""
    return self.low_res_size > 0

  @property
  def num_embeddings(self) -> int:
    """Rows of the class embedding table (0 when unconditional)."""
    if self.num_classes is None:
      return 0
    return self.num_classes + int(self.use_null_class)

  def level_channels(self) -> list[int]:
    """Channel width of every resolution level."""
    return [int(m * self.model_channels) for m in self.channel_mult]

  def attention_ds(self, warn: bool = True) -> frozenset[int]:
    """Downsample factors at which encoder/decoder blocks attend (warns on unreachable sizes)."""
    reachable = {2 ** i for i in range(len(self.channel_mult))}
    ds = set()
    for res in self.attention_resolutions:
      res = int(res)
      if res > 0 and self.image_size % res == 0 and self.image_size // res in reachable:
        ds.add(self.image_size // res)
      elif warn:
        sizes = sorted(self.image_size // d for d in reachable)
        warnings.warn(f"model.attention_resolutions: {res} px is never reached by this U-Net "
                      f"(feature maps: {sizes} px); ignored (the middle block still attends).",
                      stacklevel=2)
    return frozenset(ds)

  def _check_heads(self) -> None:
    widths = self.level_channels()
    attended = [(widths[d.bit_length() - 1], dec) for d in self.attention_ds(warn=False)
                for dec in (False, True)] + [(widths[-1], False)]
    for c, decoder in attended:
      if self.num_head_channels != -1:
        if c % self.num_head_channels:
          raise ValueError(f"an attention block has {c} channels, not divisible by "
                           f"model.num_head_channels = {self.num_head_channels}")
      else:
        heads = self._heads(decoder)
        field = "model.num_heads_upsample" if decoder and self.num_heads_upsample != -1 else \
            "model.num_heads"
        if heads < 1 or c % heads:
          raise ValueError(f"an attention block has {c} channels, not divisible into {field} = "
                           f"{heads} heads")

  def validate(self) -> None:
    """Raises ValueError (naming the config field) for a configuration that cannot be built."""
    if not self.channel_mult:
      raise ValueError("model.channel_mult must not be empty")
    for i, c in enumerate(self.level_channels()):
      if c <= 0 or c % layers.NUM_GROUPS:
        raise ValueError(
            f"model.model_channels * model.channel_mult[{i}] = {self.model_channels} * "
            f"{self.channel_mult[i]} = {c} channels is not a positive multiple of "
            f"{layers.NUM_GROUPS} (GroupNorm32 groups); change model.model_channels or "
            "model.channel_mult")
    factor = 2 ** (len(self.channel_mult) - 1)
    if self.image_size <= 0 or self.image_size % factor:
      raise ValueError(
          f"data.image_size = {self.image_size} must be divisible by 2**(len(model.channel_mult)-1)"
          f" = {factor}; change data.image_size or model.channel_mult")
    if self.num_res_blocks < 1:
      raise ValueError(f"model.num_res_blocks = {self.num_res_blocks} must be >= 1")
    if self.num_head_channels != -1 and self.num_head_channels < 1:
      raise ValueError(f"model.num_head_channels = {self.num_head_channels} must be -1 or >= 1")
    self._check_heads()
    if self.low_res_size < 0 or (self.low_res_size and self.image_size % self.low_res_size):
      raise ValueError(f"data.low_res_size = {self.low_res_size} must divide data.image_size = "
                       f"{self.image_size} (0 = base stage)")
    if self.low_res_upsample not in LOW_RES_METHODS:
      raise ValueError(f"model.low_res_upsample = {self.low_res_upsample!r}; expected one of "
                       f"{sorted(LOW_RES_METHODS)}")
    if self.aug_level_embedding and not self.is_super_resolution:
      raise ValueError("model.aug_level_embedding needs a super-resolution stage "
                       "(data.low_res_size > 0)")
    if self.num_classes is not None and self.num_classes < 1:
      raise ValueError(f"data.num_classes = {self.num_classes} must be >= 1 "
                       "(or model.class_conditional = False)")
    if self.use_null_class and self.num_classes is None:
      raise ValueError("a null class (train.class_dropout_prob > 0) needs a class-conditional "
                       "model (model.class_conditional = True)")

  def _check_inputs(self, x, t, y, low_res, aug_level) -> None:
    """Raises ValueError for inputs that do not match the configuration."""
    want = (self.image_size, self.image_size, self.in_channels)
    if x.ndim != 4 or tuple(x.shape[1:]) != want:
      raise ValueError(f"x has shape {x.shape}; expected (B, {want[0]}, {want[1]}, {want[2]}) "
                       "(data.image_size, data.channels)")
    if jnp.ndim(t) not in (0, 1):
      raise ValueError(f"t must have shape (B,) or (); got {jnp.shape(t)}")
    if self.num_classes is not None and y is None:
      raise ValueError("y (class labels) is required: the model is class-conditional "
                       "(model.class_conditional = True)")
    if self.num_classes is None and y is not None:
      raise ValueError("y was given but the model is unconditional (model.class_conditional = "
                       "False)")
    if self.is_super_resolution:
      if low_res is None:
        raise ValueError(f"low_res is required: this is a super-resolution model "
                         f"(data.low_res_size = {self.low_res_size})")
      want_lr = (x.shape[0], self.low_res_size, self.low_res_size, self.in_channels)
      if tuple(low_res.shape) != want_lr:
        raise ValueError(f"low_res has shape {low_res.shape}; expected {want_lr} "
                         "(data.low_res_size, data.channels)")
    elif low_res is not None:
      raise ValueError("low_res was given but the model is a base stage (data.low_res_size = 0)")
    if self.aug_level_embedding and aug_level is None:
      raise ValueError("aug_level is required: model.aug_level_embedding = True")
    if not self.aug_level_embedding and aug_level is not None:
      raise ValueError("aug_level was given but model.aug_level_embedding = False")

  # ------------------------------------------------------------------ forward
  def _heads(self, decoder: bool) -> int:
    if decoder and self.num_heads_upsample != -1:
      return self.num_heads_upsample
    return self.num_heads

  def _embed(self, t, y, aug_level, batch: int) -> jax.Array:
    """Time (+ augmentation level) MLP embedding plus the class embedding; float32 (B, 4ch)."""
    ch, emb_dim = self.model_channels, 4 * self.model_channels
    dense = lambda name: nn.Dense(emb_dim, dtype=jnp.float32, param_dtype=jnp.float32, name=name)
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (batch,))
    emb = dense("time_embed_2")(nn.silu(dense("time_embed_0")(layers.timestep_embedding(t, ch))))
    if self.aug_level_embedding:
      s = jnp.broadcast_to(jnp.asarray(aug_level, jnp.float32), (batch,))
      emb = emb + dense("aug_embed_2")(nn.silu(dense("aug_embed_0")(
          layers.timestep_embedding(s, ch))))
    if self.num_classes is not None:
      emb = emb + nn.Embed(self.num_embeddings, emb_dim, param_dtype=jnp.float32,
                           name="label_emb")(jnp.asarray(y, jnp.int32))
    return emb

  def _upsample_low_res(self, low_res: jax.Array) -> jax.Array:
    b, _, _, c = low_res.shape
    shape = (b, self.image_size, self.image_size, c)
    return jax.image.resize(low_res.astype(jnp.float32), shape,
                            LOW_RES_METHODS[self.low_res_upsample], antialias=False)

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, y: Optional[jax.Array] = None,
               low_res: Optional[jax.Array] = None, aug_level: Optional[jax.Array] = None,
               train: bool = False) -> jax.Array:
    """Predicts eps (and variance values) for ``x_t``.

    Args:
      x: ``(B, H, W, C)`` noisy images in [-1, 1], ``H = W = image_size``.
      t: float ``(B,)`` (or scalar) timestep values fed to the sinusoidal embedding.
      y: int ``(B,)`` labels in ``[0, num_classes]`` (``num_classes`` = null class when reserved);
        required iff class-conditional.
      low_res: ``(B, low_res_size, low_res_size, C)`` in [-1, 1]; required iff SR.
      aug_level: float ``(B,)`` conditioning-augmentation levels; required iff
        ``aug_level_embedding``.
      train: enables dropout (needs a ``"dropout"`` rng).

    Returns:
      float32 ``(B, H, W, out_channels)``; with ``learn_sigma`` eps is ``[..., :C]`` and the
      variance values ``[..., C:]``.
    """
    self.validate()
    self._check_inputs(x, t, y, low_res, aug_level)
    attn_ds = self.attention_ds()
    res_cls = nn.remat(layers.ResBlock) if self.remat else layers.ResBlock
    attn_cls = nn.remat(layers.AttentionBlock) if self.remat else layers.AttentionBlock
    dt = self.dtype

    def res(out_ch, name, up=False, down=False):
      return res_cls(out_ch, dropout=self.dropout, use_scale_shift_norm=self.use_scale_shift_norm,
                     up=up, down=down, deterministic=not train, dtype=dt, name=name,
                     conv_impl=self.conv_impl)

    def attn(name, decoder=False):
      return attn_cls(num_heads=self._heads(decoder), num_head_channels=self.num_head_channels,
                      use_new_attention_order=self.use_new_attention_order, dtype=dt, name=name)

    emb = self._embed(t, y, aug_level, x.shape[0])
    self.sow("intermediates", "emb", emb)
    h = x.astype(jnp.float32)
    if self.is_super_resolution:
      h = jnp.concatenate([h, self._upsample_low_res(low_res)], axis=-1)  # x_t first.

    # Encoder and middle: every encoder block's output is a skip.
    widths = self.level_channels()
    h = layers.conv3x3(widths[0], dt, "input_blocks_0_0", impl=self.conv_impl)(h.astype(dt))
    self.sow("intermediates", "input_blocks_0", h)
    first = h
    h, outputs = layers.encoder_and_middle(
        h, emb, widths=widths, num_res_blocks=self.num_res_blocks, attention_ds=attn_ds,
        resblock_updown=self.resblock_updown, res=res, attn=attn,
        downsample=lambda ch, name: layers.Downsample(ch, dtype=dt, name=name,
                                                      conv_impl=self.conv_impl),
        record=lambda tag, value: self.sow("intermediates", tag, value))
    skips, ds = [first] + outputs, 2 ** (len(widths) - 1)

    # Decoder: pop skips LIFO, concat [h, skip].
    idx = 0
    for level in reversed(range(len(widths))):
      for i in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, skips.pop().astype(h.dtype)], axis=-1)
        h = res(widths[level], f"output_blocks_{idx}_0")(h, emb)
        ch, j = widths[level], 1
        if ds in attn_ds:
          h = attn(f"output_blocks_{idx}_{j}", decoder=True)(h)
          j += 1
        if level and i == self.num_res_blocks:
          name = f"output_blocks_{idx}_{j}"
          if self.resblock_updown:
            h = res(ch, name, up=True)(h, emb)
          else:
            h = layers.Upsample(ch, dtype=dt, name=name, conv_impl=self.conv_impl)(h)
          ds //= 2
        self.sow("intermediates", f"output_blocks_{idx}", h)
        idx += 1

    # Head (float32, like guided-diffusion under fp16).
    h = nn.silu(layers.GroupNorm32(name="out_0")(h.astype(jnp.float32)))
    return layers.conv3x3(self.out_channels, jnp.float32, "out_2", zero_init=True,
                          impl=self.conv_impl)(h)


# ---------------------------------------------------------------------- factory and sizes
def model_kwargs(config) -> dict[str, Any]:
  """UNet constructor arguments from a stage config (``config.model`` + ``config.data`` + ``train``).

  Args:
    config: a stage ``ConfigDict`` as built by ``cdm.config_base.stage_config``.

  Returns:
    A dict of ``UNet`` fields.
  """
  m, d = config.model, config.data
  class_dropout = float(config.train.class_dropout_prob) if "train" in config else 0.0
  conditional = bool(m.class_conditional)
  return dict(
      **backbone_kwargs(config),
      num_heads_upsample=int(m.num_heads_upsample),
      num_classes=int(d.num_classes) if conditional else None,
      use_null_class=conditional and class_dropout > 0,
      learn_sigma=bool(m.learn_sigma),
      low_res_size=int(d.low_res_size),
      low_res_upsample=str(m.low_res_upsample),
      aug_level_embedding=bool(m.aug_level_embedding),
      conv_impl=str(m.get("conv_impl", "xla")),
  )


def backbone_kwargs(config) -> dict[str, Any]:
  """Constructor arguments the U-Net and the noisy classifier share (the ADM encoder's shape,
  attention, dropout, input, dtype and remat), from ``config.model`` and ``config.data``."""
  m, d = config.model, config.data
  return dict(
      model_channels=int(m.model_channels),
      channel_mult=tuple(m.channel_mult),
      num_res_blocks=int(m.num_res_blocks),
      attention_resolutions=tuple(int(r) for r in m.attention_resolutions),
      num_heads=int(m.num_heads),
      num_head_channels=int(m.num_head_channels),
      dropout=float(m.dropout),
      use_scale_shift_norm=bool(m.use_scale_shift_norm),
      resblock_updown=bool(m.resblock_updown),
      use_new_attention_order=bool(m.use_new_attention_order),
      in_channels=int(d.channels),
      image_size=int(d.image_size),
      dtype=jnp.dtype(m.dtype),
      remat=bool(m.remat),
  )


def create_model(config) -> UNet:
  """Builds the stage's U-Net from a stage config (validated eagerly; raises ValueError)."""
  model = UNet(**model_kwargs(config))
  model.validate()
  return model


def dummy_inputs(model: UNet, batch: int = 1) -> dict[str, jax.ShapeDtypeStruct]:
  """Abstract keyword inputs (``x``, ``t`` and the conditioning the model needs) for ``init``."""
  f32 = jnp.float32
  s = model.image_size
  inputs = dict(x=jax.ShapeDtypeStruct((batch, s, s, model.in_channels), f32),
                t=jax.ShapeDtypeStruct((batch,), f32))
  if model.num_classes is not None:
    inputs["y"] = jax.ShapeDtypeStruct((batch,), jnp.int32)
  if model.is_super_resolution:
    r = model.low_res_size
    inputs["low_res"] = jax.ShapeDtypeStruct((batch, r, r, model.in_channels), f32)
  if model.aug_level_embedding:
    inputs["aug_level"] = jax.ShapeDtypeStruct((batch,), f32)
  return inputs


def init_params(model: UNet, key: jax.Array) -> Any:
  """Initialises the parameters of ``model`` (one compiled init on a dummy batch of one)."""
  def init(rng):
    zeros = {k: jnp.zeros(v.shape, v.dtype) for k, v in dummy_inputs(model).items()}
    return model.init({"params": rng}, **zeros)["params"]
  return jax.jit(init)(key)


def _model_key(model: UNet) -> tuple:
  """Hashable identity of a UNet's configuration (for caching)."""
  def freeze(v):
    return tuple(v) if isinstance(v, list) else v
  return tuple((f.name, freeze(getattr(model, f.name))) for f in dataclasses.fields(model)
               if f.name not in ("parent", "name"))


@functools.lru_cache(maxsize=64)
def _abstract_params_cached(key: tuple) -> Any:
  model = UNet(**dict(key))

  def init(rng, inputs):
    return model.init({"params": rng}, **inputs)["params"]

  return jax.eval_shape(init, jax.random.key(0), dummy_inputs(model))


def abstract_params(model_or_config) -> Any:
  """Parameter shapes/dtypes (a tree of ``jax.ShapeDtypeStruct``) without allocating anything.

  Traced once per configuration with ``jax.eval_shape`` (cached: tracing a large U-Net takes
  seconds).
  """
  model = model_or_config if isinstance(model_or_config, UNet) else create_model(model_or_config)
  tree = _abstract_params_cached(_model_key(model))
  return jax.tree_util.tree_map(lambda x: x, tree)  # fresh containers for the caller


def param_count(model_or_config) -> int:
  """Number of parameters of a stage config's (or a UNet's) model, via ``jax.eval_shape``."""
  leaves = jax.tree_util.tree_leaves(abstract_params(model_or_config))
  return int(sum(x.size for x in leaves))


def param_bytes(model_or_config, dtype: Dtype = jnp.float32) -> int:
  """Bytes taken by one copy of the parameters stored in ``dtype`` (float32 = training params)."""
  return param_count(model_or_config) * jnp.dtype(dtype).itemsize
