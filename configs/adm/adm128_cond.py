"""guided-diffusion's released `adm128_cond` checkpoint as a cdm stage (see configs/adm/common.py).

  python -m cdm.models.convert --checkpoint=PATH/TO/CHECKPOINT.pt \
      --config=configs/adm/adm128_cond.py --out=converted/adm128_cond
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position


def get_config(variant: str = ""):
  return common.adm_config("adm128_cond", variant)
