"""ADM's 64x64 ImageNet noisy classifier (Dhariwal & Nichol 2021), for classifier guidance.

guided-diffusion's flags: classifier_width 128, classifier_depth 4, attention at 32/16/8 px,
use_scale_shift_norm, resblock_updown, attention pool; AdamW lr 3e-4, weight decay 0.05, batch 256,
300k steps with the learning rate annealed to 0. The diffusion (T = 1000, cosine) is that of the
released 64x64 model (configs/adm/adm64_cond.py), so the converted `64x64_classifier.pt` loads here:
  python -m cdm.models.convert --checkpoint=64x64_classifier.pt --config=configs/classifier64.py \
      --out=converted/classifier64
Train it (the same loop as every stage):
  python -m cdm.main --config=configs/classifier64.py --workdir=gs://BUCKET/cdm/classifier64
To guide configs/base64.py (T = 4000) train with --config.diffusion.num_timesteps=4000: the classifier
must see the guided stage's timesteps.
"""

from cdm import config_base
from cdm.models import noisy_classifier


def get_config(variant: str = ""):
  c = noisy_classifier.config_from_guided_diffusion(
      dict(image_size=64, classifier_width=128, classifier_depth=4,
           classifier_attention_resolutions="32,16,8", classifier_use_scale_shift_norm=True,
           classifier_resblock_updown=True, classifier_pool="attention"),
      base_config=config_base.imagenet_stage(64), num_classes=1000)
  c.stage_name = "classifier64"
  c.model.dtype = "bfloat16"
  c.diffusion.num_timesteps = 1000
  c.diffusion.beta_schedule = "cosine"
  c.train.batch_size = 256
  c.train.num_steps = 300_000
  c.train.learning_rate = 3e-4
  c.train.weight_decay = 0.05
  c.train.lr_schedule = "cosine"
  c.train.warmup_steps = 0
  c.sample.use_ema = False  # ADM guides with the raw classifier weights (it keeps no EMA).
  return config_base.finalize(c, variant)
