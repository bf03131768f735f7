"""Shared defaults for every stage config.

Every stage file under ``configs/`` calls :func:`stage_config` and changes a few fields. The tree built
here is the complete set of knobs cdm understands: the config is locked, so an override of a field that
is not listed here (``--config.train.bach_size=8``) is an error, not a silent no-op.

Conventions:
  * ``data.low_res_size == 0`` means a base stage (no low-res input); otherwise an SR stage.
  * Images are NHWC; uint8 on the host, float in [-1, 1] on device.
  * Conditioning-augmentation levels ``s`` are integers in ``[0, augment.num_timesteps]`` of the
    augmentation schedule (1-indexed as in the paper; ``s = 0`` means a clean low-res input).
"""

from __future__ import annotations

import ml_collections

# jax 0.10's default YNNPACK fusion set on CPU is INDIVIDUAL_CONVOLUTION, INDIVIDUAL_DOT, REDUCE:
# keep the dots and reductions, leave convolutions to XLA's own kernels (cdm/xla_options.py).
CPU_XLA_OPTIONS = ("xla_cpu_experimental_ynn_fusion_type="
                   "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE")


def parse_xla_options(spec: str) -> dict:
  """``xla.cpu_options`` -> dict: ``"name=value name2=value2"`` (space-separated; values may hold
  commas)."""
  out = {}
  for item in spec.split():
    name, sep, value = item.partition("=")
    if not sep or not name:
      raise ValueError(f"xla.cpu_options: {item!r} is not name=value (options are "
                       f"space-separated, e.g. {CPU_XLA_OPTIONS!r}; '' = XLA's defaults).")
    out[name] = value
  return out


def stage_config() -> ml_collections.ConfigDict:
  """Returns the default (unlocked) stage config; stage files modify it and lock it."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # Seeds params init, data order, and every per-step key (fold_in(seed, step)).
  c.stage_name = "stage"  # Free-form name written to logs and checkpoints' metadata.
  c.kind = "diffusion"  # "diffusion" (base or SR stage) or "classifier" (ADM noisy classifier).

  # ---------------------------------------------------------------- data
  c.data = d = ml_collections.ConfigDict()
  d.dataset = "cdm_mnist"  # TFDS name ("imagenet2012", "imagenet_resized/32x32", "cifar10", "cdm_mnist",
  #                          "image_folder:/path/to/root" for a folder of class sub-folders).
  d.data_dir = ""  # TFDS data_dir (local path or gs://). "" = TFDS default (~/tensorflow_datasets).
  d.train_split = "train"  # TFDS split used for training.
  d.eval_split = "test"  # TFDS split used for held-out low-res inputs and evaluation.
  d.image_size = 16  # Stage output (hi-res) resolution.
  d.low_res_size = 0  # Low-res conditioning resolution; 0 = base stage (no low_res input).
  d.channels = 1  # Channels fed to the model: 1 keeps grayscale, 3 expands grayscale to RGB.
  d.crop = "center"  # "center": largest central square (BigGAN-style); "none": resize whole image.
  d.pad_to_square = 0  # Pad images to this size before resizing (MNIST 28 -> 32); 0 = no padding.
  d.random_flip = True  # Random left-right flip of the (hi-res, low-res) pair.
  d.shuffle_buffer = 10_000  # tf.data shuffle buffer (examples).
  d.prefetch = 2  # Batches prefetched on the host.
  d.cache = True  # Cache decoded, resized examples in memory (small datasets only).
  d.num_classes = 10  # Number of classes of the dataset's labels.

  # ---------------------------------------------------------------- model (ADM U-Net)
  c.model = m = ml_collections.ConfigDict()
  m.model_channels = 32  # Base channel width (ADM's num_channels).
  m.channel_mult = (1, 2)  # Width multiplier per resolution level.
  m.num_res_blocks = 1  # Residual blocks per level.
  m.attention_resolutions = (8,)  # Feature-map sizes (pixels) at which to attend.
  m.num_heads = 4  # Attention heads (used when num_head_channels == -1).
  m.num_head_channels = 16  # Channels per head; -1 = use num_heads.
  m.num_heads_upsample = -1  # Heads in the decoder; -1 = num_heads.
  m.dropout = 0.0  # Dropout in residual blocks.
  m.use_scale_shift_norm = True  # Adaptive group norm (scale-shift from the embedding).
  m.resblock_updown = True  # BigGAN-style residual up/down-sampling.
  m.use_new_attention_order = True  # qkv head layout: True = QKVAttention, False = legacy.
  m.learn_sigma = True  # Output 2C channels: eps then variance values (learned_range).
  m.low_res_upsample = "bilinear"  # How low_res is resized to image_size ("bilinear" or "bicubic").
  m.aug_level_embedding = False  # SR: embed the conditioning-augmentation level s (added to time emb).
  m.class_conditional = True  # Embed the class label (num_classes from data.num_classes).
  m.dtype = "float32"  # Compute dtype ("float32" or "bfloat16"); params are always float32.
  m.remat = False  # Rematerialise residual blocks (less memory, more compute).
  m.conv_impl = "xla"  # How convs are computed: "xla" (XLA's convolution) or "im2col" (patches +
  #                      one matmul; same params; slower on XLA:CPU here, docs/performance.md).

  # ---------------------------------------------------------------- diffusion
  c.diffusion = f = ml_collections.ConfigDict()
  f.num_timesteps = 1000  # Training steps T.
  f.beta_schedule = "cosine"  # "linear" or "cosine".
  f.model_mean_type = "epsilon"  # "epsilon", "start_x" or "v".
  f.model_var_type = "learned_range"  # "fixed_small", "fixed_large", "learned", "learned_range".
  f.loss_type = "rescaled_mse"  # "mse", "rescaled_mse" (hybrid), "kl", "rescaled_kl".
  f.noise_conditioning = "index"  # "index": model sees the timestep index; "continuous": a function
  #                                of abar_t, so any respaced schedule can be used at sampling time.

  # ---------------------------------------------------------------- conditioning augmentation (SR)
  c.augment = a = ml_collections.ConfigDict()
  a.gaussian = False  # Gaussian noise augmentation of low_res (z_s = q_sample(low_res, s)).
  a.num_timesteps = 1000  # T of the augmentation schedule (match the previous stage for truncation).
  a.beta_schedule = "cosine"  # Schedule of the augmentation forward process.
  a.max_level = 1000  # Training: s ~ U{0..max_level} per example.
  a.blur = False  # Gaussian blur augmentation (3x3 kernel).
  a.blur_prob = 0.5  # Fraction of training examples blurred.
  a.blur_sigma_min = 0.4  # Blur sigma ~ U(min, max).
  a.blur_sigma_max = 0.6

  # ---------------------------------------------------------------- optimisation
  c.train = t = ml_collections.ConfigDict()
  t.batch_size = 64  # Global batch size (all devices, all hosts).
  t.num_steps = 5000  # Total training steps.
  t.learning_rate = 1e-4  # Peak learning rate (Adam).
  t.lr_schedule = "constant"  # "constant" or "cosine" (after warmup).
  t.warmup_steps = 0  # Linear warmup from 0 to learning_rate.
  t.weight_decay = 0.0  # AdamW decoupled weight decay; 0 = Adam.
  t.beta1 = 0.9
  t.beta2 = 0.999
  t.grad_clip_norm = 1.0  # Global-norm clipping; 0 disables.
  t.ema_decay = 0.9999  # EMA of params (used for sampling).
  t.ema_warmup = True  # EMA decay min(ema_decay, (1 + n) / (10 + n)).
  t.class_dropout_prob = 0.0  # Classifier-free guidance label dropout (null class = num_classes).
  t.max_consecutive_nonfinite = 10  # Stop after this many consecutive skipped (non-finite) steps.
  t.log_every = 50  # Steps between metric writes.
  t.checkpoint_every = 500  # Steps between (async) checkpoints.
  t.keep_every = 0  # Also keep every K-th step's checkpoint forever; 0 = none.
  t.max_to_keep = 3  # Rolling checkpoints kept.
  t.sample_every = 1000  # Steps between sample grids (EMA params); 0 = never.
  t.num_samples = 16  # Images in the periodic sample grid.
  t.sample_steps = 100  # Respaced steps for the periodic sample grid.
  t.profile_steps = 0  # Capture a profiler trace of this many steps after step 10; 0 = off.
  t.peak_flops_per_device = 0.0  # For MFU; 0 = look up the device kind (CPU: measured).

  # ---------------------------------------------------------------- devices
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # Data-parallel axis size; -1 = all devices / fsdp.
  c.mesh.fsdp = 1  # Parameter-sharding axis size (1 = replicated params).
  c.mesh.fsdp_min_size = 2 ** 20  # Only shard parameters with at least this many elements.

  # ---------------------------------------------------------------- compiler
  c.xla = ml_collections.ConfigDict()
  # XLA compiler options for this stage's programs on CPU (space-separated name=value; "" = XLA's
  # defaults). Default: 3x3 convolutions on XLA's Eigen kernels, not YNNPACK (faster on CPU, see
  # cdm/xla_options.py). Accelerators ignore it.
  c.xla.cpu_options = CPU_XLA_OPTIONS

  # ---------------------------------------------------------------- sampling defaults (this stage)
  c.sample = s = ml_collections.ConfigDict()
  s.sampler = "ancestral"  # "ancestral" or "ddim".
  s.num_steps = 100  # Respaced sampling steps ("250", "ddim50", ... also accepted as strings).
  s.eta = 0.0  # DDIM eta.
  s.clip_denoised = True  # Clip predicted x0 to [-1, 1].
  s.dynamic_threshold = 0.0  # Imagen dynamic thresholding percentile (e.g. 0.995); 0 = off.
  s.guidance_scale = 0.0  # Classifier-free guidance weight w (0 = off; needs class_dropout_prob > 0).
  s.aug_level = 0  # SR: conditioning-augmentation level s at sampling.
  s.use_ema = True  # Sample with EMA params.
  return c


# ------------------------------------------------------------------ variants, validation, locking

def apply_tiny(c: ml_collections.ConfigDict) -> None:
  """Shrinks a stage config so it runs a few steps on a laptop CPU, keeping its structure.

  Resolutions are divided down to at most 32 px (hi-res) keeping the stage's up-sampling factor, the
  U-Net keeps its number of levels and its conditioning paths; widths drop to 32-64 channels (base
  32, channel multipliers capped at 2: the paper's x8 levels would keep a "tiny" SR model at 20M
  parameters, slow to compile and checkpoint on a CPU).
  """
  factor = max(1, c.data.image_size // 32)
  c.data.image_size //= factor
  if c.data.low_res_size:
    c.data.low_res_size = max(4, c.data.low_res_size // factor)
  levels = len(c.model.channel_mult)
  # Keep the number of levels but never go below 2x2 feature maps.
  while levels > 1 and c.data.image_size // 2 ** (levels - 1) < 2:
    levels -= 1
  c.model.channel_mult = tuple(min(m, 2) for m in c.model.channel_mult[:levels])
  c.model.model_channels = 32
  c.model.num_res_blocks = 1
  c.model.num_head_channels = 16
  c.model.dropout = 0.0
  c.model.dtype = "float32"  # bfloat16 is emulated (slow) on CPU
  smallest = c.data.image_size // 2 ** (levels - 1)
  c.model.attention_resolutions = (smallest,)
  c.data.num_classes = min(c.data.num_classes, 10)
  if c.data.dataset not in ("cdm_mnist",):
    c.data.dataset = "cdm_mnist"
    c.data.channels = 1
    c.data.pad_to_square = 32
    c.data.crop = "none"
  c.data.cache = True
  c.diffusion.num_timesteps = min(c.diffusion.num_timesteps, 1000)
  c.augment.num_timesteps = min(c.augment.num_timesteps, 1000)
  c.augment.max_level = min(c.augment.max_level, c.augment.num_timesteps)
  c.train.batch_size = 8
  c.train.num_steps = 2
  c.train.log_every = 1
  c.train.checkpoint_every = 2
  c.train.sample_every = 0
  c.train.num_samples = 4
  c.train.sample_steps = 4
  c.sample.num_steps = 4
  c.mesh.data = -1
  c.mesh.fsdp = 1


def validate(c: ml_collections.ConfigDict) -> None:
  """Rejects impossible combinations with a message naming the field to change."""
  d, m = c.data, c.model
  if "xla" in c:
    parse_xla_options(c.xla.cpu_options)
  if c.kind not in ("diffusion", "classifier"):
    raise ValueError(f"kind={c.kind!r}: expected 'diffusion' or 'classifier'.")
  if d.image_size <= 0:
    raise ValueError(f"data.image_size={d.image_size} must be positive.")
  if d.low_res_size:
    if d.low_res_size >= d.image_size or d.image_size % d.low_res_size:
      raise ValueError(
          f"data.low_res_size={d.low_res_size} must be smaller than and divide data.image_size="
          f"{d.image_size} (e.g. 16 -> 32, 32 -> 64, 64 -> 256).")
  levels = len(m.channel_mult)
  if d.image_size % 2 ** (levels - 1):
    raise ValueError(
        f"data.image_size={d.image_size} is not divisible by 2**(len(model.channel_mult)-1)="
        f"{2 ** (levels - 1)}: drop a level from model.channel_mult or change the resolution.")
  reachable = {d.image_size // 2 ** i for i in range(levels)}
  bad = [r for r in m.attention_resolutions if r not in reachable]
  if bad:
    raise ValueError(
        f"model.attention_resolutions={tuple(m.attention_resolutions)}: {bad} never occur in this "
        f"U-Net, whose feature maps are {sorted(reachable, reverse=True)} px.")
  if d.channels not in (1, 3):
    raise ValueError(f"data.channels={d.channels}: expected 1 (grayscale) or 3 (RGB).")
  if c.augment.gaussian and not d.low_res_size:
    raise ValueError("augment.gaussian=True needs an SR stage (data.low_res_size > 0).")
  if c.augment.blur and not d.low_res_size:
    raise ValueError("augment.blur=True needs an SR stage (data.low_res_size > 0).")
  if c.augment.gaussian and not m.aug_level_embedding:
    raise ValueError(
        "augment.gaussian=True: set model.aug_level_embedding=True so the SR model is told the "
        "augmentation level s (the paper conditions on it).")
  if not 0 <= c.augment.max_level <= c.augment.num_timesteps:
    raise ValueError(
        f"augment.max_level={c.augment.max_level} must lie in [0, augment.num_timesteps="
        f"{c.augment.num_timesteps}].")
  if c.train.class_dropout_prob and not m.class_conditional:
    raise ValueError("train.class_dropout_prob > 0 needs model.class_conditional=True.")
  if c.sample.guidance_scale and not c.train.class_dropout_prob:
    raise ValueError(
        "sample.guidance_scale > 0 needs a model trained with train.class_dropout_prob > 0 "
        "(classifier-free guidance needs the null class).")
  if c.train.batch_size <= 0 or c.train.num_steps < 0:
    raise ValueError("train.batch_size must be positive and train.num_steps non-negative.")
  if m.dtype not in ("float32", "bfloat16"):
    raise ValueError(f"model.dtype={m.dtype!r}: expected 'float32' or 'bfloat16'.")
  if m.get("conv_impl", "xla") not in ("xla", "im2col"):
    raise ValueError(f"model.conv_impl={m.conv_impl!r}: expected 'xla' or 'im2col'.")


def finalize(c: ml_collections.ConfigDict, variant: str = "") -> ml_collections.ConfigDict:
  """Applies a variant ("" or "tiny"), validates and locks the config (unknown keys become errors)."""
  if variant == "tiny":
    apply_tiny(c)
  elif variant:
    raise ValueError(f"unknown config variant {variant!r}: expected '' or 'tiny' "
                     "(--config=configs/<stage>.py:tiny).")
  validate(c)
  c.lock()
  return c


def imagenet_stage(image_size: int, low_res_size: int = 0) -> ml_collections.ConfigDict:
  """Defaults shared by the paper's ImageNet stages (PAPER.md section 4).

  Data: ``imagenet_resized/{32,64}x64`` when the stage's hi-res is 32 or 64 px (the low-res input is
  derived from the same image), full ``imagenet2012`` (center crop, anti-aliased resize) above that.
  All stages: class-conditional over 1000 classes, Adam lr 1e-4, EMA 0.9999, random flips.
  """
  c = stage_config()
  d = c.data
  d.dataset = (f"imagenet_resized/{image_size}x{image_size}" if image_size <= 64
               else "imagenet2012")
  d.eval_split = "validation"
  d.image_size, d.low_res_size = image_size, low_res_size
  d.channels = 3
  d.crop = "center"
  d.random_flip = True
  d.num_classes = 1000
  d.cache = False
  d.shuffle_buffer = 50_000
  c.model.num_head_channels = 64
  c.model.use_new_attention_order = True
  c.model.dtype = "bfloat16"
  c.train.learning_rate = 1e-4
  c.train.ema_decay = 0.9999
  c.train.warmup_steps = 1000
  c.train.log_every = 100
  c.train.checkpoint_every = 5000
  c.train.keep_every = 100_000
  c.train.sample_every = 20_000
  c.train.num_samples = 64
  return c


def hybrid_loss_stage(c: ml_collections.ConfigDict) -> None:
  """The paper's low-resolution stages (PAPER.md section 4, 32 px base and 32 -> 64; also the 64 px
  baseline): cosine schedule with T=4000, learned-range variances trained with the hybrid loss
  (L_simple + 0.001 L_vlb, ``rescaled_mse``), dropout 0.1, batch 2048, 250 sampling steps."""
  c.model.dropout = 0.1
  c.model.learn_sigma = True
  c.diffusion.num_timesteps = 4000
  c.diffusion.beta_schedule = "cosine"
  c.diffusion.model_var_type = "learned_range"
  c.diffusion.loss_type = "rescaled_mse"
  c.train.batch_size = 2048
  c.sample.num_steps = 250


def blur_sr_stage(c: ml_collections.ConfigDict) -> None:
  """The paper's high-resolution SR stages (PAPER.md section 4, 64 -> 128 and 64 -> 256): T=2000
  cosine, fixed (large) variances with the plain MSE loss, continuous noise-level conditioning (so
  100-step sampling can use any respacing), blur conditioning augmentation on half the examples with
  sigma ~ U(0.4, 0.6), legacy attention head order, one head level at 16 px, batch 1024, 500k steps."""
  c.model.num_res_blocks = 3
  c.model.attention_resolutions = (16,)
  c.model.dropout = 0.0
  c.model.learn_sigma = False
  c.model.use_new_attention_order = False
  c.diffusion.num_timesteps = 2000
  c.diffusion.beta_schedule = "cosine"
  c.diffusion.model_var_type = "fixed_large"
  c.diffusion.loss_type = "mse"
  c.diffusion.noise_conditioning = "continuous"
  c.augment.blur = True
  c.augment.blur_prob = 0.5
  c.augment.blur_sigma_min = 0.4
  c.augment.blur_sigma_max = 0.6
  c.train.batch_size = 1024
  c.train.num_steps = 500_000
  c.sample.num_steps = 100


def gaussian_augmentation(c: ml_collections.ConfigDict, num_timesteps: int,
                          beta_schedule: str = "cosine") -> None:
  """Gaussian conditioning augmentation amortised over s ~ U{0..T} (PAPER.md section 3), using the
  previous stage's forward process (T, schedule) so truncated augmentation matches training; the SR
  model is told s through its aug-level embedding."""
  c.augment.gaussian = True
  c.augment.num_timesteps = num_timesteps
  c.augment.beta_schedule = beta_schedule
  c.augment.max_level = num_timesteps
  c.model.aug_level_embedding = True
