"""CDM stage: class-conditional 32 -> 64 super-resolution with Gaussian conditioning augmentation
(PAPER.md section 4, second row; section 3 for the augmentation).

The augmentation uses the base stage's forward process (cosine, T=4000) so that truncated
augmentation (stop the base chain at step s) matches training; s is amortised over [0, T].
  python -m cdm.main --config=configs/sr32_64.py --workdir=gs://BUCKET/cdm/sr32_64
"""

from cdm import config_base


def get_config(variant: str = ""):
  c = config_base.imagenet_stage(64, 32)
  c.stage_name = "sr32_64"
  c.model.model_channels = 256
  c.model.channel_mult = (1, 2, 3, 4)
  c.model.num_res_blocks = 5
  c.model.attention_resolutions = (16, 8)
  c.model.dropout = 0.1
  c.model.learn_sigma = True
  c.model.aug_level_embedding = True
  c.diffusion.num_timesteps = 4000
  c.diffusion.beta_schedule = "cosine"
  c.diffusion.model_var_type = "learned_range"
  c.diffusion.loss_type = "rescaled_mse"
  c.augment.gaussian = True
  c.augment.num_timesteps = 4000
  c.augment.beta_schedule = "cosine"
  c.augment.max_level = 4000
  c.train.batch_size = 2048
  c.train.num_steps = 400_000
  c.sample.num_steps = 250
  c.sample.aug_level = 1000
  return config_base.finalize(c, variant)
