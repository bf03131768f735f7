"""CDM stage: class-conditional ImageNet 32x32 base model (PAPER.md section 4, first row).

  python -m cdm.main --config=configs/base32.py --workdir=gs://BUCKET/cdm/base32 \
      --config.data.data_dir=gs://BUCKET/tfds
"""

from cdm import config_base


def get_config(variant: str = ""):
  c = config_base.imagenet_stage(32)
  config_base.hybrid_loss_stage(c)
  c.stage_name = "base32"
  c.model.model_channels = 256
  c.model.channel_mult = (1, 2, 3, 4)
  c.model.num_res_blocks = 6
  c.model.attention_resolutions = (16, 8)
  c.train.num_steps = 700_000
  return config_base.finalize(c, variant)
