"""cdm.torch_reference times the same network as cdm: the torch ADM U-Net, converted with
cdm.models.convert, must give cdm's output (skipped without torch, which cdm does not depend on)."""

import pytest

from cdm import cascade_config


def test_torch_unet_is_cdm_unet_and_its_train_step_runs():
  pytest.importorskip("torch")
  from cdm import torch_reference
  config = cascade_config.load_stage_config("configs/mnist/base16.py", "tiny")
  model = torch_reference.build_torch_unet(config)
  assert torch_reference.check_same_network(config, model) < 1e-4
  r = torch_reference.time_torch_train(config, model, steps=1, warmup=1, channels_last=True)
  assert r["step_s"] > 0 and r["memory_format"] == "channels_last"
  # The timed copy trained; the reference model is untouched (both formats start from it).
  assert torch_reference.check_same_network(config, model) < 1e-4


def test_torch_reference_refuses_sr_stages():
  pytest.importorskip("torch")
  from cdm import torch_reference
  with pytest.raises(ValueError, match="base stages"):
    torch_reference.build_torch_unet(
        cascade_config.load_stage_config("configs/mnist/sr16_32.py", "tiny"))
