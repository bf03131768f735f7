"""MNIST cascade, stage 2: class-conditional 16 -> 32 super-resolution with Gaussian conditioning
augmentation amortised over the level s (the paper's key ingredient).

  python -m cdm.main --config=configs/mnist/sr16_32.py --workdir=workdirs/mnist_sr16_32
Without augmentation (the paper's ablation): --config.augment.gaussian=False
"""

from cdm import config_base


def get_config(variant: str = ""):
  c = config_base.stage_config()
  c.stage_name = "mnist_sr16_32"
  c.data.dataset = "cdm_mnist"
  c.data.image_size = 32
  c.data.low_res_size = 16
  c.data.channels = 1
  c.data.crop = "none"
  c.data.pad_to_square = 32
  c.data.random_flip = False

  c.model.model_channels = 32
  c.model.channel_mult = (1, 2, 2)
  c.model.num_res_blocks = 1
  c.model.attention_resolutions = (8,)
  c.model.num_head_channels = 32
  c.model.aug_level_embedding = True

  c.diffusion.num_timesteps = 1000
  c.diffusion.beta_schedule = "cosine"

  # Same forward process as the base stage, so truncated augmentation (stop the base chain at s)
  # and the SR model's training distribution agree.
  c.augment.gaussian = True
  c.augment.num_timesteps = 1000
  c.augment.beta_schedule = "cosine"
  c.augment.max_level = 1000

  c.train.batch_size = 32
  c.train.num_steps = 3000
  c.train.learning_rate = 2e-4
  c.train.warmup_steps = 100
  c.train.ema_decay = 0.999
  c.train.sample_every = 1000
  c.train.num_samples = 16
  c.train.sample_steps = 50
  return config_base.finalize(c, variant)
