"""MNIST cascade, stage 2 without conditioning augmentation: the paper's ablation of sr16_32.py.

The same network and training as configs/mnist/sr16_32.py (the level embedding is kept and always
sees s = 0), but the low-res input is never corrupted at training, so the model only ever sees clean
downsampled digits.
  python -m cdm.main --config=configs/mnist/sr16_32_noaug.py --workdir=workdirs/mnist_sr16_32_noaug
Equivalent to: --config=configs/mnist/sr16_32.py --config.augment.gaussian=False
"""

from cdm import cascade_config, config_base


def get_config(variant: str = ""):
  c = cascade_config.load_stage_config("configs/mnist/sr16_32.py", variant)
  c.unlock()
  c.stage_name = "mnist_sr16_32_noaug"
  c.augment.gaussian = False
  config_base.validate(c)
  c.lock()
  return c
