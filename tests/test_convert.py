"""Tests of the guided-diffusion checkpoint converter: every ADM config, errors, files and the CLI."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from cdm.models import convert
from cdm.models import unet as unet_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
SPEC_NAMES = ["tiny_cond", "tiny_sr", "adm64_cond", "adm128_cond", "adm256_uncond", "adm256_cond",
              "adm512_cond", "adm_up64_256", "adm_up128_512"]
TINY_PREFIX = "tiny_cond/param/"


@pytest.fixture(scope="module")
def specs(shared_dir):
  return json.loads((shared_dir / "specs" / "adm_specs.json").read_text())


def spec_config(spec):
  """cdm stage config of one adm_specs.json entry (num_classes from its model kwargs)."""
  return convert.model_config_from_guided_diffusion(
      spec["args"], num_classes=spec["model_kwargs"]["num_classes"])


def spec_shapes(spec):
  return {k: tuple(s) for k, s in spec["state_dict"]}


def _flat(tree):
  return {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize("name", SPEC_NAMES)
def test_every_adm_config(specs, name):
  """Param count (eval_shape) and state_dict keys/shapes of each guided-diffusion config."""
  spec = specs[name]
  config = spec_config(spec)
  model = unet_lib.create_model(config)
  mk = spec["model_kwargs"]
  assert model.model_channels == mk["model_channels"]
  assert tuple(model.channel_mult) == tuple(mk["channel_mult"])
  assert model.attention_ds() == frozenset(mk["attention_resolutions"])
  assert model.out_channels == mk["out_channels"] and model.num_classes == mk["num_classes"]
  assert model.use_new_attention_order == mk.get("use_new_attention_order", False)
  assert model.is_super_resolution == (spec["model_class"] == "SuperResModel")

  assert unet_lib.param_count(config) == spec["param_count"]
  shapes = spec_shapes(spec)
  plan = convert.check_state_dict(shapes, config)
  assert set(plan) == set(shapes)
  if spec["param_count"] < 2_000_000:  # full conversion of zeros for the small configs
    params = convert.convert_guided_diffusion(
        {k: np.zeros(s, np.float32) for k, s in shapes.items()}, config)
    want = {k: v.shape for k, v in _flat(unet_lib.abstract_params(config)).items()}
    assert {k: v.shape for k, v in _flat(params).items()} == want


def _error(shapes, config):
  with pytest.raises(ValueError) as e:
    convert.check_state_dict(shapes, config)
  return str(e.value)


def test_mismatches_name_keys_and_config_fields(specs):
  spec = specs["tiny_cond"]
  config, shapes = spec_config(spec), spec_shapes(spec)

  msg = _error({k: v for k, v in shapes.items() if k != "input_blocks.3.1.qkv.weight"}, config)
  assert "missing keys (1): input_blocks.3.1.qkv.weight" in msg
  assert "model.attention_resolutions" in msg
  msg = _error(dict(shapes, **{"extra.weight": (3,)}), config)
  assert "unexpected keys (1): extra.weight" in msg

  config.model.class_conditional = False
  assert "model.class_conditional = True" in _error(shapes, config)
  config.model.class_conditional = True
  config.data.num_classes = 1000
  msg = _error(shapes, config)
  assert "label_emb.weight checkpoint (10, 128) vs model (1000, 128)" in msg
  assert "data.num_classes" in msg

  sr = spec_config(specs["tiny_sr"])
  sr.data.low_res_size = 0
  assert "data.low_res_size" in _error(spec_shapes(specs["tiny_sr"]), sr)
  sr.data.low_res_size, sr.model.learn_sigma = 16, False
  assert "model.learn_sigma" in _error(spec_shapes(specs["tiny_sr"]), sr)


def test_model_config_from_guided_diffusion():
  base = dict(num_channels=256, num_res_blocks=2, attention_resolutions="32,16,8",
              class_cond=True, learn_sigma=True, use_new_attention_order=True)
  for size, mult in {64: (1, 2, 3, 4), 128: (1, 1, 2, 3, 4), 256: (1, 1, 2, 2, 4, 4),
                     512: (0.5, 1, 1, 2, 2, 4, 4)}.items():
    c = convert.model_config_from_guided_diffusion(dict(base, image_size=size, channel_mult=""))
    assert tuple(c.model.channel_mult) == mult and c.data.image_size == size
    assert c.model.attention_resolutions == (32, 16, 8) and c.data.low_res_size == 0
    assert c.model.use_new_attention_order and c.data.num_classes == 1000
  assert unet_lib.create_model(c).level_channels()[0] == 128  # int(0.5 * 256)
  sr = convert.model_config_from_guided_diffusion(dict(base, large_size=256, small_size=64))
  assert sr.data.low_res_size == 64 and not sr.model.use_new_attention_order  # legacy only
  assert tuple(sr.model.channel_mult) == (1, 1, 2, 2, 4, 4)
  c = convert.model_config_from_guided_diffusion(dict(base, image_size=32, channel_mult="1,2.5"))
  assert tuple(c.model.channel_mult) == (1, 2.5)
  with pytest.raises(ValueError, match="channel_mult"):
    convert.model_config_from_guided_diffusion(dict(base, image_size=48))


# ---------------------------------------------------------------------- files and CLI
@pytest.fixture(scope="module")
def tiny(shared_dir, specs):
  """(npz path, guided-diffusion args incl. num_classes, stage config, directly converted params)."""
  path = shared_dir / "specs" / "adm_tiny_cond.npz"
  args = dict(specs["tiny_cond"]["args"], num_classes=10)
  config = convert.model_config_from_guided_diffusion(args)
  params = convert.convert_guided_diffusion(convert.load_state_dict(path, TINY_PREFIX), config)
  return path, args, config, params


def _assert_same_params(got, want):
  got, want = _flat(got), _flat(want)
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_array_equal(np.asarray(got[k]), want[k], err_msg=k)


def test_cli_npz_to_orbax_and_load_converted(tiny, tmp_path):
  path, args, config, params = tiny
  config_file = tmp_path / "tiny_cond_config.py"
  config_file.write_text(
      "from cdm.models import convert\n\n\ndef get_config():\n"
      f"  return convert.model_config_from_guided_diffusion({args!r})\n")
  out = tmp_path / "converted"
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
  proc = subprocess.run(
      [sys.executable, "-m", "cdm.models.convert", f"--checkpoint={path}",
       f"--config={config_file}", f"--out={out}", f"--prefix={TINY_PREFIX}"],
      env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "829,638 parameters" in proc.stdout
  _assert_same_params(convert.load_converted(out), params)
  meta = json.loads((out / "config.json").read_text())
  assert meta["format"] == convert.FORMAT and meta["param_count"] == 829_638
  assert unet_lib.model_kwargs(convert.load_converted_config(out)) == unet_lib.model_kwargs(config)


def test_pt_checkpoint(tiny, tmp_path):
  torch = pytest.importorskip("torch")
  path, args, _, params = tiny
  state_dict = convert.load_state_dict(path, TINY_PREFIX)
  pt = tmp_path / "model.pt"
  torch.save({k: torch.from_numpy(v).half() if k.startswith("input_blocks") else
              torch.from_numpy(v) for k, v in state_dict.items()}, pt)
  out = convert.run(str(pt), str(tmp_path / "out"), gd_args=args)
  loaded = convert.load_converted(out)
  flat, want = _flat(loaded), _flat(params)
  assert flat.keys() == want.keys()
  for k in want:  # fp16 tensors (as in use_fp16 checkpoints) load as float32
    assert flat[k].dtype == np.float32
    np.testing.assert_allclose(flat[k], want[k], rtol=1e-3, atol=1e-4, err_msg=k)
