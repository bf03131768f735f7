"""MNIST noisy classifier p(y | x_t) at 16x16, for classifier guidance of configs/mnist/base16.py.

Same data and diffusion (T = 1000, cosine, timestep-index conditioning) as the base stage, so it can
guide it (configs/cascades/mnist_guided.py):
  python -m cdm.main --config=configs/mnist/classifier16.py --workdir=workdirs/mnist_classifier16
"""

from cdm import config_base
from cdm.models import noisy_classifier


def get_config(variant: str = ""):
  c = noisy_classifier.classifier_stage_config()
  c.stage_name = "mnist_classifier16"
  c.data.dataset = "cdm_mnist"
  c.data.image_size = 16
  c.data.channels = 1
  c.data.crop = "none"
  c.data.pad_to_square = 32  # As configs/mnist/base16.py: the classifier sees the base's frames.
  c.data.random_flip = False

  c.model.model_channels = 32
  c.model.channel_mult = (1, 2, 2)
  c.model.num_res_blocks = 2
  c.model.attention_resolutions = (8,)
  c.model.num_head_channels = 32
  c.classifier.pool = "attention"

  c.diffusion.num_timesteps = 1000
  c.diffusion.beta_schedule = "cosine"

  c.train.batch_size = 64
  c.train.num_steps = 2000
  c.train.learning_rate = 3e-4
  c.train.weight_decay = 0.05
  c.train.warmup_steps = 100
  c.train.ema_decay = 0.999
  c.train.log_every = 50
  c.train.checkpoint_every = 500
  return config_base.finalize(c, variant)
