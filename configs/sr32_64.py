"""CDM stage: class-conditional 32 -> 64 super-resolution with Gaussian conditioning augmentation
(PAPER.md section 4, second row; section 3 for the augmentation).

The augmentation uses the base stage's forward process (cosine, T=4000) so that truncated
augmentation (stop the base chain at step s) matches training; s is amortised over [0, T].
  python -m cdm.main --config=configs/sr32_64.py --workdir=gs://BUCKET/cdm/sr32_64
"""

from cdm import config_base


def get_config(variant: str = ""):
  c = config_base.imagenet_stage(64, 32)
  config_base.hybrid_loss_stage(c)
  config_base.gaussian_augmentation(c, num_timesteps=4000)
  c.stage_name = "sr32_64"
  c.model.model_channels = 256
  c.model.channel_mult = (1, 2, 3, 4)
  c.model.num_res_blocks = 5
  c.model.attention_resolutions = (16, 8)
  c.train.num_steps = 400_000
  c.sample.aug_level = 1000  # Default s at sampling; choose it with --mode=sweep after training.
  return config_base.finalize(c, variant)
