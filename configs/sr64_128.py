"""CDM stage: class-conditional 64 -> 128 super-resolution with blur conditioning augmentation,
fixed variance and continuous noise conditioning (T=2000 training, 100 sampling steps).
(PAPER.md section 4, third row.)
  python -m cdm.main --config=configs/sr64_128.py --workdir=gs://BUCKET/cdm/sr64_128
"""

from cdm import config_base


def get_config(variant: str = ""):
  c = config_base.imagenet_stage(128, 64)
  config_base.blur_sr_stage(c)
  c.stage_name = "sr64_128"
  c.model.model_channels = 128
  c.model.channel_mult = (1, 2, 4, 8, 8)
  return config_base.finalize(c, variant)
