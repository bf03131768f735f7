"""The conditioning-augmentation study (cdm.experiments.augmentation_study): tiny end-to-end run and
the verdict logic on crafted numbers."""

import functools
import json
import os

import jax
import pytest

from cdm import cascade_config, checkpointing, train
from cdm.experiments import augmentation_study as study


def _rows(noaug, aug_nt, aug_tr=(), gt=()):
  rows = [{"model": "noaug", "input": "generated", "form": "non_truncated", "aug_level": 0,
           "fid": noaug, "cas_top1": 0.5}]
  rows += [{"model": "aug", "input": "generated", "form": "non_truncated", "aug_level": s,
            "fid": f, "cas_top1": 0.6} for s, f in aug_nt]
  rows += [{"model": "aug", "input": "generated", "form": "truncated", "aug_level": s, "fid": f}
           for s, f in aug_tr]
  rows += [{"model": "aug", "input": "ground_truth", "form": "non_truncated", "aug_level": s,
            "fid": f} for s, f in gt]
  return rows


def test_verdict_reproduced():
  rows = _rows(20.0, [(0, 18.0), (101, 10.0), (201, 11.0), (401, 16.0)], [(101, 10.5)],
               [(0, 3.0), (101, 4.0), (201, 6.0), (401, 9.0)])
  v = study.verdict(rows, fid_noise=0.5)
  assert v["overall"] == "reproduced" and v["strength"] == "strong"
  c = v["claims"]
  assert c["augmentation_helps"]["best"] == {"form": "non_truncated", "aug_level": 101,
                                             "fid": 10.0}
  assert c["nonmonotonic_generated"]["best_aug_level"] == 101
  assert c["ground_truth_falls"]["monotone"] and c["ground_truth_falls"]["spearman"] == 1.0


def test_verdict_not_reproduced_and_partial():
  # Augmentation never beats the clean-trained SR model.
  v = study.verdict(_rows(10.0, [(0, 11.0), (101, 12.0), (201, 13.0)], gt=[(0, 3.0), (101, 4.0)]))
  assert v["overall"] == "not reproduced"
  assert not v["claims"]["augmentation_helps"]["holds"]
  assert not v["claims"]["nonmonotonic_generated"]["holds"]  # best at s = 0: monotone
  # It helps, but only at the largest s swept, and ground-truth quality does not fall with s.
  v = study.verdict(_rows(20.0, [(0, 19.0), (101, 18.0), (201, 17.0)],
                          gt=[(0, 5.0), (101, 4.0), (201, 6.0)]), fid_noise=4.0)
  assert v["overall"] == "partly reproduced"
  assert v["claims"]["augmentation_helps"]["strength"] == "weak"  # 3 < 1 noise std
  assert not v["claims"]["nonmonotonic_generated"]["holds"]
  assert not v["claims"]["ground_truth_falls"]["holds"]
  assert v["held"] == ["augmentation_helps"]


def test_strength_thresholds():
  assert study._strength(-1.0, 10.0, None) == "none"
  assert study._strength(2.0, 10.0, None) == "strong"
  assert study._strength(2.0, 10.0, 1.0) == "moderate"
  assert study._strength(0.2, 10.0, None) == "weak"


def test_commands_are_cdm_main_commands(tmp_path):
  steps, base = study.build_steps("small", str(tmp_path / "root"), base_workdir="")
  names = [s.name for s in steps]
  assert names == ["base", "sr_aug", "sr_noaug", "reference", "sweep_aug", "sweep_noaug"]
  sweep = study.parse_main_args(steps[names.index("sweep_aug")].argv)[0]
  assert sweep.stages.sr.config.augment.gaussian and "truncated" in sweep.sweep.aug_forms
  noaug = study.parse_main_args(steps[names.index("sweep_noaug")].argv)[0]
  assert not noaug.stages.sr.config.augment.gaussian and tuple(noaug.sweep.aug_levels) == (0,)
  assert sweep.stages.sr.checkpoint.endswith("root/sr_aug") and sweep.stages.base.checkpoint == base
  assert study._train_target(steps[names.index("sr_aug")].argv) == study.TRAIN["small"]["sr_steps"]


def test_narrower_augmentation_range(tmp_path):
  """--aug_max_level trains the augmented model on s ~ U{0..N} and keeps the sweep inside it."""
  steps, _ = study.build_steps("small", str(tmp_path / "root"), aug_max_level=300)
  by = {s.name: s for s in steps}
  assert study.parse_main_args(by["sr_aug"].argv)[0].augment.max_level == 300
  assert study.parse_main_args(by["sr_noaug"].argv)[0].augment.max_level == 1000
  sweep = study.parse_main_args(by["sweep_aug"].argv)[0].sweep
  assert tuple(sweep.aug_levels) == (0, 101) and tuple(sweep.truncated_levels) == ()
  steps, _ = study.build_steps("small", str(tmp_path / "root"), aug_max_level=300,
                               aug_levels=("0", "51", "300"), truncated_levels=("101",))
  sweep = study.parse_main_args(steps[[s.name for s in steps].index("sweep_aug")].argv)[0].sweep
  assert tuple(sweep.aug_levels) == (0, 51, 300) and tuple(sweep.truncated_levels) == (101,)
  with pytest.raises(ValueError, match="exceed --aug_max_level=300"):
    study.build_steps("small", str(tmp_path / "root"), aug_max_level=300, aug_levels=("301",))


def _init_stage(config_path, workdir, extra_steps=0):
  """A freshly initialised tiny checkpoint at the config's final step (training counts as done),
  or ``extra_steps`` past it (as if the workdir had been trained on)."""
  c = cascade_config.load_stage_config(config_path, "tiny")
  model, _, tx = train.build(c)
  state = jax.jit(functools.partial(train.init_state, c, model, tx))(jax.random.PRNGKey(0))
  ckpt = checkpointing.Checkpointer(str(workdir), c.train, async_save=False)
  ckpt.save(c.train.num_steps + extra_steps, state, {}, c, force=True)
  ckpt.close()


def test_tiny_study_end_to_end(tmp_path):
  root, docs = tmp_path / "root", tmp_path / "docs"
  # Training is covered by the configs' own tests: start from initialised checkpoints so this
  # test exercises the study's reference, sweeps, report and resumption.
  _init_stage("configs/mnist/base16.py", tmp_path / "base")
  for kind, path in study.SR_CONFIG.items():
    _init_stage(path, root / f"sr_{kind}")
  kw = dict(scale="tiny", workdir_root=str(root), docs_dir=str(docs),
            base_workdir=str(tmp_path / "base"), data_dir=str(tmp_path / "tfds"),
            runner="inprocess")
  out = study.run_study(**kw)
  page = (docs / "augmentation_study.md").read_text()
  assert "Verdict" in page and "python -m cdm.main --mode=sweep" in page
  assert (docs / "augmentation_study" / "metric_vs_s.png").exists()
  saved = json.loads((root / "study.json").read_text())
  assert saved["verdict"]["overall"] == out["verdict"]["overall"]
  models = {(r["model"], r["input"], r["form"], r["aug_level"]) for r in saved["rows"]}
  assert ("noaug", "generated", "non_truncated", 0) in models
  assert ("aug", "generated", "truncated", 251) in models
  assert ("aug", "ground_truth", "non_truncated", 251) in models
  assert all(p["wall_s"] is not None for p in saved["phases"]
             if p["name"] in ("reference", "sweep_aug", "sweep_noaug"))
  assert saved["reference"]["cas_top1"] is not None and saved["reference"]["fid"] is not None
  # Rerunning resumes: every step is found finished and skipped, the page is rewritten.
  mtime = os.path.getmtime(root / "sweep_aug" / "sweep.json")
  study.run_study(**kw)
  assert os.path.getmtime(root / "sweep_aug" / "sweep.json") == mtime
  # Training an SR model further makes its sweep stale (same command, newer checkpoint): only
  # that sweep reruns.
  _init_stage(study.SR_CONFIG["aug"], root / "sr_aug", extra_steps=1)
  noaug_mtime = os.path.getmtime(root / "sweep_noaug" / "sweep.json")
  study.run_study(**kw, only=["sweep_aug", "sweep_noaug"])
  assert os.path.getmtime(root / "sweep_aug" / "sweep.json") > mtime
  assert os.path.getmtime(root / "sweep_noaug" / "sweep.json") == noaug_mtime
