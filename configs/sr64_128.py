"""CDM stage: class-conditional 64 -> 128 super-resolution with blur conditioning augmentation,
fixed variance and continuous noise-level conditioning (T=2000 training, 100 sampling steps).
(PAPER.md section 4, third row.)
  python -m cdm.main --config=configs/sr64_128.py --workdir=gs://BUCKET/cdm/sr64_128
"""

from cdm import config_base


def get_config(variant: str = ""):
  c = config_base.imagenet_stage(128, 64)
  c.stage_name = "sr64_128"
  c.model.model_channels = 128
  c.model.channel_mult = (1, 2, 4, 8, 8)
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
  return config_base.finalize(c, variant)
