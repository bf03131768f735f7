"""The ADM noisy classifier p_phi(y | x_t, t) used for classifier guidance (Dhariwal & Nichol 2021).

The network is the encoder half of the ADM U-Net (stem, input blocks, middle block: the same
``ResBlock`` / ``AttentionBlock`` modules as :class:`cdm.models.unet.UNet`, conditioned on the timestep
only, no class embedding) followed by a pooling head that maps the last feature map to logits. Its
layer structure follows guided-diffusion's ``EncoderUNetModel`` so that the released classifiers
(``64x64_classifier.pt``, ...) convert with :mod:`cdm.models.convert`.

Parameter tree (top level), mirroring the guided-diffusion ``state_dict``::

  time_embed_0, time_embed_2     Linear(ch -> 4ch), SiLU, Linear(4ch -> 4ch)
  input_blocks_{i}_{j}           input_blocks.i.j
  middle_block_{j}               middle_block.j
  pool "attention":  out_0 (GroupNorm), out_2 (AttentionPool2d: positional_embedding, qkv_proj,
                     c_proj)
  pool "adaptive":   out_0 (GroupNorm), out_3 (1x1 conv, zero-initialised)
  pool "spatial":    out_0 (Linear F -> 2048), out_2 (Linear 2048 -> K)
  pool "spatial_v2": out_0 (Linear F -> 2048), out_1 (GroupNorm), out_3 (Linear 2048 -> K)

(``F`` = the summed widths of every input block and the middle block, whose spatial means are
concatenated.) The attention pool (CLIP-style) prepends the spatial mean token to the ``H*W`` tokens,
adds a learned positional embedding, runs multi-head attention with the ``[q | k | v]`` channel order
(guided-diffusion's ``QKVAttention``) and returns the projected output of the mean token.

A classifier is a stage config with ``kind = "classifier"`` (see :func:`classifier_stage_config`):
``model.*`` holds the encoder's architecture (``model_channels`` = guided-diffusion's
``classifier_width``, ``num_res_blocks`` = ``classifier_depth``), ``data.num_classes`` the number of
logits, and the extra section ``classifier`` the head and the training metrics.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from cdm.models import layers
from cdm.models import unet

Dtype = Any

POOLS = ("attention", "adaptive", "spatial", "spatial_v2")
SPATIAL_HIDDEN = 2048  # Hidden width of guided-diffusion's "spatial" heads.


class AttentionPool2d(nn.Module):
  """Attention pooling of a feature map into one vector (CLIP's head, as in guided-diffusion).

  Tokens are ``[mean over H*W, x_1, ..., x_{H*W}]`` (row-major) plus ``positional_embedding``
  ``(H*W + 1, C)``; ``qkv_proj`` (C -> 3C, ``[q | k | v]`` blocks, head h at ``[h d, (h+1) d)``
  of each), softmax attention with scale ``1/sqrt(d)``, ``c_proj`` (C -> out); the output of the
  first (mean) token is returned.

  Attributes:
    num_head_channels: channels per head ``d`` (heads = C // d).
    out_features: output width (the number of classes).
    dtype: compute dtype (softmax in float32).
  """
  num_head_channels: int
  out_features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Args: x (B, H, W, C). Returns (B, out_features)."""
    b, hh, ww, c = x.shape
    heads = c // self.num_head_channels
    if heads < 1 or c % self.num_head_channels:
      raise ValueError(f"AttentionPool2d: {c} channels do not split into heads of "
                       f"{self.num_head_channels} (model.num_head_channels)")
    d = c // heads
    pos = self.param("positional_embedding", nn.initializers.normal(stddev=c ** -0.5),
                     (hh * ww + 1, c), jnp.float32)
    tokens = x.reshape(b, hh * ww, c)
    tokens = jnp.concatenate([tokens.mean(axis=1, keepdims=True), tokens], axis=1)
    tokens = (tokens + pos.astype(tokens.dtype)).astype(self.dtype)
    qkv = nn.Dense(3 * c, dtype=self.dtype, param_dtype=jnp.float32, name="qkv_proj")(tokens)
    qkv = qkv.reshape(b, hh * ww + 1, 3, heads, d)
    a = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
    a = a.reshape(b, hh * ww + 1, c).astype(self.dtype)
    out = nn.Dense(self.out_features, dtype=self.dtype, param_dtype=jnp.float32,
                   name="c_proj")(a[:, 0])
    return out


class NoisyClassifier(nn.Module):
  """ADM noisy classifier (guided-diffusion ``EncoderUNetModel``): ``(x_t, t) -> logits``.

  Attributes:
    model_channels: base width ``ch`` (guided-diffusion ``classifier_width``).
    channel_mult: width multiplier per level; each level but the last ends with a 2x downsampling.
    num_res_blocks: residual blocks per level (``classifier_depth``).
    attention_resolutions: feature-map sizes in pixels with an attention block after each residual
      block (the middle block always attends).
    num_heads: attention heads when ``num_head_channels == -1``.
    num_head_channels: channels per head (guided-diffusion's classifiers use 64); the attention
      pool needs it.
    dropout: dropout rate inside residual blocks (``train=True``).
    use_scale_shift_norm: adaptive group norm from the timestep embedding.
    resblock_updown: residual down-sampling blocks (else stride-2 convs).
    use_new_attention_order: qkv layout of the encoder's attention blocks (guided-diffusion's
      classifiers use the legacy order, False); the pool always uses ``[q | k | v]``.
    num_classes: number of output logits.
    in_channels: image channels.
    image_size: input resolution.
    pool: output head, one of :data:`POOLS`.
    dtype: compute dtype of the trunk; the head and the logits are float32.
    remat: rematerialise residual / attention blocks in the backward pass.
  """
  model_channels: int = 32
  channel_mult: Sequence[float] = (1, 2)
  num_res_blocks: int = 1
  attention_resolutions: Sequence[int] = (8,)
  num_heads: int = 1
  num_head_channels: int = 16
  dropout: float = 0.0
  use_scale_shift_norm: bool = True
  resblock_updown: bool = True
  use_new_attention_order: bool = False
  num_classes: int = 10
  in_channels: int = 3
  image_size: int = 16
  pool: str = "attention"
  dtype: Dtype = jnp.float32
  remat: bool = False

  def level_channels(self) -> list[int]:
    """Width ``int(mult * ch)`` of each level."""
    return [int(m * self.model_channels) for m in self.channel_mult]

  def attention_ds(self) -> set[int]:
    """Downsample factors ``image_size // res`` at which the encoder attends."""
    return {self.image_size // int(r) for r in self.attention_resolutions
            if int(r) > 0 and self.image_size % int(r) == 0}

  def validate(self) -> None:
    """Raises ValueError (naming the config field) for a classifier that cannot be built."""
    if self.pool not in POOLS:
      raise ValueError(f"classifier.pool = {self.pool!r}; expected one of {POOLS}")
    if not self.channel_mult:
      raise ValueError("model.channel_mult must not be empty")
    for i, c in enumerate(self.level_channels()):
      if c <= 0 or c % layers.NUM_GROUPS:
        raise ValueError(f"model.model_channels * model.channel_mult[{i}] = {c} is not a positive "
                         f"multiple of {layers.NUM_GROUPS} (GroupNorm32)")
    factor = 2 ** (len(self.channel_mult) - 1)
    if self.image_size <= 0 or self.image_size % factor:
      raise ValueError(f"data.image_size = {self.image_size} must be divisible by "
                       f"2**(len(model.channel_mult)-1) = {factor}")
    if self.num_res_blocks < 1:
      raise ValueError(f"model.num_res_blocks = {self.num_res_blocks} must be >= 1")
    if self.pool == "attention" and self.num_head_channels < 1:
      raise ValueError("classifier.pool = 'attention' needs model.num_head_channels >= 1")
    if self.num_classes < 1:
      raise ValueError(f"data.num_classes = {self.num_classes} must be >= 1")

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, train: bool = False) -> jax.Array:
    """Logits of ``p(y | x_t)``.

    Args:
      x: ``(B, H, W, C)`` noisy images in [-1, 1].
      t: float ``(B,)`` (or scalar) timestep values, as the diffusion model receives them
        (``GaussianDiffusion.model_time``).
      train: enables dropout (needs a ``"dropout"`` rng).

    Returns:
      float32 ``(B, num_classes)`` logits.
    """
    self.validate()
    want = (self.image_size, self.image_size, self.in_channels)
    if x.ndim != 4 or tuple(x.shape[1:]) != want:
      raise ValueError(f"x has shape {x.shape}; expected (B, {want[0]}, {want[1]}, {want[2]})")
    dt, batch = self.dtype, x.shape[0]
    res_cls = nn.remat(layers.ResBlock) if self.remat else layers.ResBlock
    attn_cls = nn.remat(layers.AttentionBlock) if self.remat else layers.AttentionBlock

    def res(out_ch, name, down=False):
      return res_cls(out_ch, dropout=self.dropout, use_scale_shift_norm=self.use_scale_shift_norm,
                     down=down, deterministic=not train, dtype=dt, name=name)

    def attn(name):
      return attn_cls(num_heads=self.num_heads, num_head_channels=self.num_head_channels,
                      use_new_attention_order=self.use_new_attention_order, dtype=dt, name=name)

    ch, emb_dim = self.model_channels, 4 * self.model_channels
    dense = lambda name: nn.Dense(emb_dim, dtype=jnp.float32, param_dtype=jnp.float32, name=name)
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (batch,))
    emb = dense("time_embed_2")(nn.silu(dense("time_embed_0")(layers.timestep_embedding(t, ch))))

    attn_ds, widths = self.attention_ds(), self.level_channels()
    h = layers.conv3x3(widths[0], dt, "input_blocks_0_0")(x.astype(dt))
    first = h
    h, outputs = layers.encoder_and_middle(
        h, emb, widths=widths, num_res_blocks=self.num_res_blocks, attention_ds=attn_ds,
        resblock_updown=self.resblock_updown, res=res, attn=attn,
        downsample=lambda ch, name: layers.Downsample(ch, dtype=dt, name=name))
    feats = [first] + outputs + [h]  # every block's output, for the "spatial" heads

    k, f32 = self.num_classes, jnp.float32
    if self.pool == "attention":
      h = nn.silu(layers.GroupNorm32(name="out_0")(h.astype(f32)))
      return AttentionPool2d(self.num_head_channels, k, dtype=f32, name="out_2")(h)
    if self.pool == "adaptive":
      h = nn.silu(layers.GroupNorm32(name="out_0")(h.astype(f32)))
      h = h.mean(axis=(1, 2), keepdims=True)
      return nn.Conv(k, (1, 1), dtype=f32, param_dtype=f32, kernel_init=nn.initializers.zeros,
                     bias_init=nn.initializers.zeros, name="out_3")(h).reshape(batch, k)
    h = jnp.concatenate([f.astype(f32).mean(axis=(1, 2)) for f in feats], axis=-1)
    h = nn.Dense(SPATIAL_HIDDEN, dtype=f32, param_dtype=f32, name="out_0")(h)
    if self.pool == "spatial":
      return nn.Dense(k, dtype=f32, param_dtype=f32, name="out_2")(nn.relu(h))
    h = nn.silu(layers.GroupNorm32(name="out_1")(h))
    return nn.Dense(k, dtype=f32, param_dtype=f32, name="out_3")(h)


# ---------------------------------------------------------------------- config and factory
def classifier_stage_config(base=None) -> ml_collections.ConfigDict:
  """An (unlocked) stage config of kind ``"classifier"`` with the ``classifier`` section added.

  Args:
    base: a stage config to modify (default ``cdm.config_base.stage_config()``).

  Returns:
    The config: ``kind = "classifier"``, ``model.class_conditional = False`` (the label is the
    target, not an input), no learned variances, no periodic sample grid.
  """
  from cdm import config_base  # pylint: disable=import-outside-toplevel
  c = base if base is not None else config_base.stage_config()
  c.kind = "classifier"
  c.model.class_conditional = False  # The label is the classifier's target, never an input.
  c.model.learn_sigma = False  # Unused by a classifier; kept off so configs read clearly.
  c.model.use_new_attention_order = False  # guided-diffusion classifiers: legacy qkv order.
  c.train.sample_every = 0  # A classifier has no sample grid.
  c.train.ema_decay = 0.9999
  c.classifier = k = ml_collections.ConfigDict()
  k.pool = "attention"  # Output head: "attention" (ADM), "adaptive", "spatial", "spatial_v2".
  k.t_buckets = 4  # Accuracy is logged per timestep bucket [k T / n, (k+1) T / n), k < n; the
  #                  training t are stratified over these buckets (uniform marginal, as in ADM).
  return c


def classifier_kwargs(config) -> dict[str, Any]:
  """NoisyClassifier constructor arguments from a ``kind = "classifier"`` stage config."""
  head = config.get("classifier", None)
  return dict(
      **unet.backbone_kwargs(config),
      num_classes=int(config.data.num_classes),
      pool=str(head.pool) if head is not None else "attention",
  )


def create_classifier(config) -> NoisyClassifier:
  """Builds the classifier of a ``kind = "classifier"`` stage config (validated; ValueError)."""
  if config.get("kind", "diffusion") != "classifier":
    raise ValueError(f"stage {config.get('stage_name', '?')!r} has kind={config.get('kind')!r}; "
                     "a noisy classifier needs kind = 'classifier'")
  if config.data.low_res_size:
    raise ValueError("a noisy classifier sees x_t only: set data.low_res_size = 0")
  model = NoisyClassifier(**classifier_kwargs(config))
  model.validate()
  return model


def _key(model: NoisyClassifier) -> tuple:
  return tuple((f.name, tuple(v) if isinstance(v := getattr(model, f.name), list) else v)
               for f in dataclasses.fields(model) if f.name not in ("parent", "name"))


@functools.lru_cache(maxsize=32)
def _abstract_cached(key: tuple) -> Any:
  model = NoisyClassifier(**dict(key))
  s = model.image_size
  x = jax.ShapeDtypeStruct((1, s, s, model.in_channels), jnp.float32)
  t = jax.ShapeDtypeStruct((1,), jnp.float32)
  return jax.eval_shape(lambda r, x, t: model.init({"params": r}, x, t)["params"],
                        jax.random.key(0), x, t)


def abstract_params(model_or_config) -> Any:
  """Parameter shapes (``jax.ShapeDtypeStruct`` tree) of a classifier, via ``jax.eval_shape``."""
  model = model_or_config if isinstance(model_or_config, NoisyClassifier) else \
      create_classifier(model_or_config)
  return jax.tree_util.tree_map(lambda x: x, _abstract_cached(_key(model)))


def param_count(model_or_config) -> int:
  """Number of parameters of a classifier (config or module)."""
  return int(sum(x.size for x in jax.tree_util.tree_leaves(abstract_params(model_or_config))))


def config_from_guided_diffusion(args, base_config=None, num_classes: int | None = None):
  """A cdm classifier stage config reproducing guided-diffusion's ``create_classifier(**args)``.

  Args:
    args: ``image_size``, ``classifier_width``, ``classifier_depth``,
      ``classifier_attention_resolutions`` ("32,16,8"), ``classifier_use_scale_shift_norm``,
      ``classifier_resblock_updown``, ``classifier_pool`` (missing keys take guided-diffusion's
      ``classifier_defaults``); optionally ``channel_mult`` and ``in_channels``.
    base_config: config to modify (default :func:`classifier_stage_config`).
    num_classes: logits (default ``args["num_classes"]`` or 1000).

  Returns:
    The (unlocked) stage config. guided-diffusion fixes ``num_head_channels = 64``, the legacy qkv
    order and the channel multipliers per image size.
  """
  from cdm.models import convert  # pylint: disable=import-outside-toplevel
  a = {"image_size": 64, "classifier_width": 128, "classifier_depth": 2,
       "classifier_attention_resolutions": "32,16,8", "classifier_use_scale_shift_norm": True,
       "classifier_resblock_updown": True, "classifier_pool": "attention", **dict(args)}
  c = classifier_stage_config(base_config)
  size = int(a["image_size"])
  mult = a.get("channel_mult", "")
  res = a["classifier_attention_resolutions"]
  m = c.model
  m.model_channels = int(a["classifier_width"])
  m.channel_mult = convert._parse_mult(mult) if mult else convert.default_channel_mult(size)  # pylint: disable=protected-access
  m.num_res_blocks = int(a["classifier_depth"])
  m.attention_resolutions = tuple(int(r) for r in str(res).split(",") if r.strip()) \
      if isinstance(res, str) else tuple(int(r) for r in res)
  m.num_heads = 1
  m.num_head_channels = 64
  m.dropout = 0.0
  m.use_scale_shift_norm = bool(a["classifier_use_scale_shift_norm"])
  m.resblock_updown = bool(a["classifier_resblock_updown"])
  m.use_new_attention_order = False
  m.dtype = "float32"
  c.classifier.pool = str(a["classifier_pool"])
  c.data.image_size = size
  c.data.low_res_size = 0
  c.data.channels = int(a.get("in_channels", 3))
  c.data.num_classes = int(num_classes or a.get("num_classes") or convert.GD_NUM_CLASSES)
  c.train.class_dropout_prob = 0.0
  return c


# ---------------------------------------------------------------------- training objective
def stratified_timesteps(key, batch: int, num_timesteps: int, num_buckets: int) -> jax.Array:
  """Training timesteps: example i draws t uniformly from bucket ``i mod num_buckets``.

  Bucket k is ``[floor(k T / n), floor((k+1) T / n))``. Over a random example the marginal of t is
  uniform on ``0..T-1`` when n divides T (the buckets are equally wide), as in ADM's classifier
  training, and every bucket gets examples in every batch (so per-bucket accuracies exist).
  """
  n = max(1, min(int(num_buckets), int(num_timesteps)))
  bucket = jnp.arange(batch) % n
  lo = (bucket * num_timesteps) // n
  hi = ((bucket + 1) * num_timesteps) // n
  u = jax.random.uniform(key, (batch,))
  return jnp.minimum(lo + jnp.floor(u * (hi - lo)).astype(jnp.int32), hi - 1).astype(jnp.int32)


def training_losses(logits_fn, diffusion, x_start, labels, t, noise, num_buckets: int = 1):
  """Cross-entropy of the classifier on ``x_t = q_sample(x_0, t, noise)`` (ADM Sec. 4.1).

  Args:
    logits_fn: ``logits_fn(x_t, t_model) -> (B, K)`` logits.
    diffusion: the training :class:`~cdm.diffusion.gaussian.GaussianDiffusion`.
    x_start: ``(B, H, W, C)`` clean images in [-1, 1].
    labels: int ``(B,)`` targets.
    t: int ``(B,)`` timesteps.
    noise: standard normal, the shape of ``x_start``.
    num_buckets: number of timestep buckets for the accuracy metrics.

  Returns:
    dict ``loss`` (per-example cross-entropy, nats) and ``metrics``: ``accuracy``, ``top5`` (when
    K > 5) and ``accuracy_t{k}`` per bucket (mean over the bucket's examples of this batch).
  """
  x_t = diffusion.q_sample(x_start, t, noise)
  logits = logits_fn(x_t, diffusion.model_time(t)).astype(jnp.float32)
  labels = labels.astype(jnp.int32)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  ce = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
  correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  metrics = {"accuracy": correct.mean()}
  if logits.shape[-1] > 5:
    top5 = jax.lax.top_k(logits, 5)[1]
    metrics["top5"] = jnp.any(top5 == labels[:, None], axis=-1).astype(jnp.float32).mean()
  T = diffusion.num_timesteps
  n = max(1, min(int(num_buckets), T))
  bucket = sum((t >= (k * T) // n).astype(jnp.int32) for k in range(1, n)) if n > 1 else \
      jnp.zeros_like(t)  # the buckets of stratified_timesteps
  for k in range(n):
    w = (bucket == k).astype(jnp.float32)
    metrics[f"accuracy_t{k}"] = jnp.sum(w * correct) / jnp.maximum(jnp.sum(w), 1.0)
  return {"loss": ce, "metrics": metrics}
