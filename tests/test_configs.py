"""Every config: the full one builds abstractly (no allocation), its tiny variant trains two steps."""

import functools
import glob
import os

import jax
import jax.numpy as jnp
import pytest

from cdm import cascade_config, config_base, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "configs", "*.py")))
MNIST = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "configs", "mnist",
                                                                         "*.py")))
CASCADES = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "configs",
                                                                            "cascades", "*.py")))


def test_the_paper_stages_exist():
  names = {os.path.basename(p) for p in STAGES}
  assert {"base32.py", "sr32_64.py", "sr64_128.py", "sr64_256.py", "base64.py"} <= names


@pytest.mark.parametrize("path", STAGES + MNIST)
def test_full_config_builds_abstractly(path):
  """The whole train step of the full-size stage traces (shapes only: nothing is allocated)."""
  c = cascade_config.load_stage_config(path)
  model, diffusion, tx = train.build(c)
  state = jax.eval_shape(functools.partial(train.init_state, c, model, tx),
                         jax.random.PRNGKey(0))
  b, d = 2, c.data
  batch = {"image": jax.ShapeDtypeStruct((b, d.image_size, d.image_size, d.channels), jnp.uint8),
           "label": jax.ShapeDtypeStruct((b,), jnp.int32)}
  if d.low_res_size:
    batch["low_res"] = jax.ShapeDtypeStruct((b, d.low_res_size, d.low_res_size, d.channels),
                                            jnp.uint8)
  new_state, metrics = jax.eval_shape(
      functools.partial(train.train_step, config=c, model=model, diffusion=diffusion, tx=tx),
      state, batch)
  assert metrics["loss"].shape == ()
  assert jax.tree.structure(new_state) == jax.tree.structure(state)


@pytest.mark.parametrize("path", STAGES)
def test_tiny_variant_trains_two_steps(path, tmp_path):
  c = cascade_config.load_stage_config(path, "tiny")
  c.unlock()
  c.data.data_dir = str(tmp_path / "tfds")
  c.lock()
  state = train.train_and_evaluate(c, str(tmp_path / "w"))
  assert int(state.step) == 2 and int(state.nonfinite_total) == 0


def test_the_paper_cascades_exist():
  assert {"c64.py", "c128.py", "c256.py"} <= {os.path.basename(p) for p in CASCADES}


@pytest.mark.parametrize("variant", ["", "tiny"])
@pytest.mark.parametrize("path", CASCADES)
def test_cascade_configs_chain(path, variant):
  c = cascade_config.load_stage_config(path, variant)
  order = list(c.order)
  for prev, nxt in zip(order, order[1:]):
    assert c.stages[nxt].config.data.low_res_size == c.stages[prev].config.data.image_size


@pytest.mark.parametrize("field,value,message", [
    ("data.low_res_size", 24, "low_res_size"),
    ("model.attention_resolutions", (3,), "attention_resolutions"),
    ("model.channel_mult", (1, 2, 2, 2, 2, 2, 2), "channel_mult"),
    ("augment.max_level", 5000, "max_level"),
])
def test_impossible_combinations_are_rejected(field, value, message):
  c = cascade_config.load_stage_config("configs/mnist/sr16_32.py")
  c.unlock()
  section, key = field.split(".")
  c[section][key] = value
  with pytest.raises(ValueError, match=message):
    config_base.validate(c)


def test_unknown_field_is_an_error():
  c = cascade_config.load_stage_config("configs/mnist/base16.py")
  with pytest.raises(AttributeError):
    c.train.bach_size = 8


def test_batch_not_divisible_by_devices(tmp_path):
  c = cascade_config.load_stage_config("configs/mnist/base16.py", "tiny")
  c.unlock()
  c.train.batch_size = 12
  c.data.data_dir = str(tmp_path)
  c.lock()
  with pytest.raises(ValueError, match="not divisible by the 8 devices"):
    train.train_and_evaluate(c, str(tmp_path / "w"))


@pytest.mark.parametrize("name", ["adm64_cond", "adm128_cond", "adm256_cond", "adm_up64_256"])
def test_adm_configs_match_released_checkpoints(name, shared_dir):
  """configs/adm/*.py build the exact guided-diffusion architectures (parameter counts)."""
  import json  # pylint: disable=g-import-not-at-top
  from cdm import models  # pylint: disable=g-import-not-at-top
  specs = json.loads((shared_dir / "specs" / "adm_specs.json").read_text())
  c = cascade_config.load_stage_config(f"configs/adm/{name}.py")
  assert models.param_count(c) == specs[name]["param_count"]
