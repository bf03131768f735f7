"""CDM stage: class-conditional 64 -> 256 super-resolution with blur conditioning augmentation,
fixed variance and continuous noise conditioning (T=2000 training, 100 sampling steps).
(PAPER.md section 4, fourth row.)
  python -m cdm.main --config=configs/sr64_256.py --workdir=gs://BUCKET/cdm/sr64_256
"""

from cdm import config_base


def get_config(variant: str = ""):
  c = config_base.imagenet_stage(256, 64)
  config_base.blur_sr_stage(c)
  c.stage_name = "sr64_256"
  c.model.model_channels = 128
  c.model.channel_mult = (1, 2, 4, 4, 8, 8)
  c.model.remat = True  # 256 px activations: trade compute for memory.
  return config_base.finalize(c, variant)
