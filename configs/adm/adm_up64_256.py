"""guided-diffusion's released `adm_up64_256` checkpoint as a cdm stage (see configs/adm/common.py).

  python -m cdm.models.convert --checkpoint=PATH/TO/CHECKPOINT.pt \
      --config=configs/adm/adm_up64_256.py --out=converted/adm_up64_256
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position


def get_config(variant: str = ""):
  return common.adm_config("adm_up64_256", variant)
