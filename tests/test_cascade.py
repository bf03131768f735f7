"""Cascade sampling, evaluation and the aug-level sweep, end to end on tiny stages."""

import functools
import json

import jax
import numpy as np
import pytest

from cdm import cascade, cascade_config, checkpointing, evaluate, train


@pytest.fixture(scope="module")
def stage_workdirs(tmp_path_factory):
  """Workdirs holding a (freshly initialised) checkpoint of each tiny MNIST stage."""
  root = tmp_path_factory.mktemp("stages")
  out = {}
  for name, path in (("base", "configs/mnist/base16.py"), ("sr", "configs/mnist/sr16_32.py")):
    c = cascade_config.load_stage_config(path, "tiny")
    model, _, tx = train.build(c)
    state = jax.jit(functools.partial(train.init_state, c, model, tx))(jax.random.PRNGKey(0))
    ckpt = checkpointing.Checkpointer(str(root / name), c.train, async_save=False)
    ckpt.save(1, state, {}, c, force=True)
    ckpt.close()
    out[name] = str(root / name)
  return out, root


def tiny_cascade(stage_workdirs, **overrides):
  dirs, root = stage_workdirs
  c = cascade_config.load_stage_config("configs/cascades/mnist.py", "tiny")
  c.stages.base.checkpoint = dirs["base"]
  c.stages.sr.checkpoint = dirs["sr"]
  for stage in ("base", "sr"):
    c.stages[stage].config.unlock()
    c.stages[stage].config.data.data_dir = str(root / "tfds")
    c.stages[stage].config.lock()
  for k, v in overrides.items():
    node = c
    *parents, leaf = k.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = v
  return c


def test_sample_cascade_writes_every_stage_and_is_deterministic(stage_workdirs, tmp_path):
  c = tiny_cascade(stage_workdirs)
  out, labels = cascade.sample_cascade(c, str(tmp_path / "a"))
  assert out["base"].shape == (8, 16, 16, 1) and out["base"].dtype == np.uint8
  assert out["sr"].shape == (8, 32, 32, 1)
  np.testing.assert_array_equal(labels, np.arange(8) % 10)
  for stage in ("base", "sr"):
    assert (tmp_path / "a" / "samples" / f"{stage}.png").exists()
    images, saved_labels = cascade.load_samples(str(tmp_path / "a" / "samples" / f"{stage}.npz"))
    np.testing.assert_array_equal(images, out[stage])
  again, _ = cascade.sample_cascade(c, str(tmp_path / "b"))
  for stage in ("base", "sr"):
    np.testing.assert_array_equal(again[stage], out[stage])
  # Starting from a previous run's base samples reproduces the SR stage of that run.
  from_npz, _ = cascade.sample_cascade(
      c, str(tmp_path / "c"), base_samples=str(tmp_path / "a" / "samples" / "base.npz"))
  np.testing.assert_array_equal(from_npz["sr"], out["sr"])


def test_truncated_augmentation_stops_the_base_chain(stage_workdirs, tmp_path):
  # 4 respaced steps of T=1000 keep t = 0, 333, 666, 999: s must be one of 1, 334, 667, 1000.
  with pytest.raises(ValueError, match="nearest allowed"):
    cascade.Cascade(tiny_cascade(stage_workdirs, **{"stages.sr.aug_form": "truncated",
                                                    "stages.sr.aug_level": 500}))
  c = tiny_cascade(stage_workdirs, **{"stages.sr.aug_form": "truncated",
                                      "stages.sr.aug_level": 667})
  out, _ = cascade.sample_cascade(c, str(tmp_path))
  assert out["sr"].shape == (8, 32, 32, 1)


def test_chain_mismatch_is_rejected(stage_workdirs):
  c = tiny_cascade(stage_workdirs)
  c.order = ("sr", "base")
  with pytest.raises(ValueError, match="low_res_size"):
    cascade.Cascade(c)


def test_levels_beyond_the_trained_range_are_refused(stage_workdirs, tmp_path):
  """An SR workdir trained on s ~ U{0..100} (its config.json) refuses s = 250 at sampling and in a
  sweep, before anything is compiled; levels inside the range pass."""
  sr = tmp_path / "sr_narrow"
  sr.mkdir()
  (sr / "config.json").write_text(json.dumps({"augment": {"gaussian": True, "max_level": 100}}))
  c = tiny_cascade(stage_workdirs, **{"stages.sr.checkpoint": str(sr), "stages.sr.aug_level": 250})
  with pytest.raises(ValueError, match=r"\[250\].*augment.max_level=100"):
    cascade.Cascade(c)
  c.sweep.aug_levels = (0, 50, 250)
  with pytest.raises(ValueError, match=r"\[250\].*augment.max_level=100"):
    evaluate.sweep(c, str(tmp_path / "sweep"))
  cascade.check_trained_levels("sr", c.stages.sr, [0, 50, 100])  # inside the range: no error


def test_eval_and_sweep_write_results(stage_workdirs, tmp_path):
  c = tiny_cascade(stage_workdirs, **{"eval.reference_examples": 200, "sweep.aug_levels": (0, 334),
                                      "sweep.aug_forms": ("non_truncated",)})
  results = evaluate.evaluate_cascade(c, str(tmp_path))
  m = results["metrics"]
  for key in ("fid", "cas_top1", "cas_top5", "real_top1", "precision", "recall",
              "label_accuracy"):
    assert key in m and np.isfinite(m[key]), key
  assert json.loads((tmp_path / "eval.json").read_text())["metrics"]["fid"] == m["fid"]
  # Real test images against the real reference: a far smaller FID than untrained samples.
  assert results["metrics_real_test_split"]["fid"] < m["fid"]
  c.eval.cas = c.eval.precision_recall = False  # the sweep reuses the same metric code
  sweep = evaluate.sweep(c, str(tmp_path / "sweep"))
  rows = sweep["rows"]
  assert {(r["input"], r["aug_level"]) for r in rows} == {
      ("generated", 0), ("generated", 334), ("ground_truth", 0), ("ground_truth", 334)}
  for name in ("sweep.json", "sweep.md", "sweep.png"):
    assert (tmp_path / "sweep" / name).exists()
  assert list((tmp_path / "sweep").glob("events.out.tfevents*")), "sweep scalars not in TensorBoard"
