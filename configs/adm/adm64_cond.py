"""guided-diffusion's released `adm64_cond` checkpoint as a cdm stage (see configs/adm/common.py).

  python -m cdm.models.convert --checkpoint=PATH/TO/CHECKPOINT.pt \
      --config=configs/adm/adm64_cond.py --out=converted/adm64_cond
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position


def get_config(variant: str = ""):
  return common.adm_config("adm64_cond", variant)
