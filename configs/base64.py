"""Non-cascaded ImageNet 64x64 baseline (the model a 32 -> 64 cascade is compared against).

ADM-64 sized (guided-diffusion's 64x64 model): ch 192, 3 res blocks, attention at 32/16/8.
  python -m cdm.main --config=configs/base64.py --workdir=gs://BUCKET/cdm/base64
"""

from cdm import config_base


def get_config(variant: str = ""):
  c = config_base.imagenet_stage(64)
  c.stage_name = "base64"
  c.model.model_channels = 192
  c.model.channel_mult = (1, 2, 3, 4)
  c.model.num_res_blocks = 3
  c.model.attention_resolutions = (32, 16, 8)
  c.model.dropout = 0.1
  c.model.learn_sigma = True
  c.diffusion.num_timesteps = 4000
  c.diffusion.beta_schedule = "cosine"
  c.diffusion.model_var_type = "learned_range"
  c.diffusion.loss_type = "rescaled_mse"
  c.train.batch_size = 2048
  c.train.num_steps = 700_000
  c.sample.num_steps = 250
  return config_base.finalize(c, variant)
