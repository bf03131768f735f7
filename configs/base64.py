"""Non-cascaded ImageNet 64x64 baseline (the model a 32 -> 64 cascade is compared against).

ADM-64 sized (guided-diffusion's 64x64 model): ch 192, 3 res blocks, attention at 32/16/8.
  python -m cdm.main --config=configs/base64.py --workdir=gs://BUCKET/cdm/base64
"""

from cdm import config_base


def get_config(variant: str = ""):
  c = config_base.imagenet_stage(64)
  config_base.hybrid_loss_stage(c)
  c.stage_name = "base64"
  c.model.model_channels = 192
  c.model.channel_mult = (1, 2, 3, 4)
  c.model.num_res_blocks = 3
  c.model.attention_resolutions = (32, 16, 8)
  c.train.num_steps = 700_000
  return config_base.finalize(c, variant)
