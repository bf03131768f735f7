"""Parameter counts and parameter memory of the paper's cascade stages (PAPER.md section 4).

Shapes come from ``jax.eval_shape`` (nothing is allocated). All stages are class-conditional
(1000 classes) with 64-channel heads; the two 32 px-level stages learn sigma; the SR stages embed
the conditioning-augmentation level.
"""

import jax.numpy as jnp
import pytest

from cdm import config_base
from cdm.models import unet as unet_lib

# name: (image_size, low_res_size, ch, channel_mult, res_blocks, attention px, learn_sigma)
PAPER_STAGES = {
    "base32": (32, 0, 256, (1, 2, 3, 4), 6, (16, 8), True),
    "sr32_64": (64, 32, 256, (1, 2, 3, 4), 5, (16, 8), True),
    "sr64_128": (128, 64, 128, (1, 2, 4, 8, 8), 3, (16,), False),
    "sr64_256": (256, 64, 128, (1, 2, 4, 4, 8, 8), 3, (16,), False),
}

# jax.eval_shape counts (regression values; the ADM configs are checked against guided-diffusion in
# test_convert.py).
EXPECTED_PARAMS = {
    "base32": 825_505_542,  # 3.08 GiB float32
    "sr32_64": 751_690_758,  # 2.80 GiB (1_312_768 of them: the aug-level MLP)
    "sr64_128": 575_611_907,  # 2.14 GiB
    "sr64_256": 634_375_171,  # 2.36 GiB
}


def paper_stage_config(name: str, dtype: str = "float32"):
  """The stage config of one of the paper's cascade stages (model and data fields only)."""
  size, low, ch, mult, blocks, attn, learn_sigma = PAPER_STAGES[name]
  c = config_base.stage_config()
  c.data.image_size, c.data.low_res_size, c.data.channels, c.data.num_classes = size, low, 3, 1000
  m = c.model
  m.model_channels, m.channel_mult, m.num_res_blocks = ch, mult, blocks
  m.attention_resolutions, m.num_head_channels, m.num_heads_upsample = attn, 64, -1
  m.learn_sigma, m.aug_level_embedding, m.class_conditional = learn_sigma, low > 0, True
  m.dtype = dtype
  return c


@pytest.mark.parametrize("name", sorted(PAPER_STAGES))
def test_paper_stage_param_counts(name):
  config = paper_stage_config(name, dtype="bfloat16")
  n = unet_lib.param_count(config)
  assert n == EXPECTED_PARAMS[name]
  assert unet_lib.param_bytes(config) == 4 * n  # params are float32 even with bfloat16 compute
  assert unet_lib.param_bytes(config, jnp.bfloat16) == 2 * n
