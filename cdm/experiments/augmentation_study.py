r"""The conditioning-augmentation study (CDM Sec. 4.2, issue 9) on the offline MNIST cascade.

The paper: an SR model trained on clean low-res images is fed imperfect base samples at test time, so a
cascade without conditioning augmentation is worse than one with it; Gaussian noise augmentation with
the level s chosen after training fixes it; with generated low-res inputs quality vs s is
non-monotonic, with ground-truth inputs it falls as s grows. This script checks that with cdm's own
commands and writes ``docs/augmentation_study.md``:

  nice -n 5 python -m cdm.experiments.augmentation_study --scale=small \
      --workdir_root=workdirs/aug_study --base_workdir=workdirs/mnist_base16 --sr_sample_steps=50

Steps (each is one ``python -m cdm.main`` command, logged to ``<workdir_root>/logs/<step>.log`` and
timed; rerunning the script skips every finished step, so it resumes after an interruption):

  base         train the 16x16 base (configs/mnist/base16.py); with --base_workdir that model is used
  sr_aug       train 16->32 SR with Gaussian augmentation amortised over s (configs/mnist/sr16_32.py)
  sr_noaug     the same SR model without augmentation (configs/mnist/sr16_32_noaug.py)
  reference    --mode=eval on N real training images: classifier-FID and CAS of real data at the
               sample count of every setting (+ the FID noise floor: disjoint real test subsets)
  sweep_aug    --mode=sweep of sr_aug: s swept, non-truncated and truncated, generated and
               ground-truth low-res inputs (configs/cascades/mnist_study.py)
  sweep_noaug  --mode=sweep of sr_noaug at s = 0 (configs/cascades/mnist_study.py:<scale>,noaug)
  report       the results page, its plot and sample grids, and ``study.json`` (verdict included)

Every evaluation uses the same feature classifier and real-data classifier: they are trained once in
the reference step and copied into the sweep workdirs (cdm caches them there).
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time

from absl import app, flags, logging

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CASCADE = "configs/cascades/mnist_study.py"
BASE_CONFIG = "configs/mnist/base16.py"
SR_CONFIG = {"aug": "configs/mnist/sr16_32.py", "noaug": "configs/mnist/sr16_32_noaug.py"}

# Training per scale (None = the stage config's own value). Sampling and evaluation settings of each
# scale live in configs/cascades/mnist_study.py (SCALES).
TRAIN = {
    "tiny": dict(base_steps=None, base_batch=None, sr_steps=None, sr_batch=None),
    "small": dict(base_steps=None, base_batch=None, sr_steps=1000, sr_batch=32),
    "full": dict(base_steps=None, base_batch=None, sr_steps=None, sr_batch=None),
}
# Disjoint real test subsets (of the per-setting sample count) for the FID noise floor.
NOISE_SUBSETS = {"tiny": 2, "small": 5, "full": 5}
CACHE_PREFIXES = ("feature_classifier_", "reference_", "cas_real_classifier_")

_SCALE = flags.DEFINE_enum("scale", "small", sorted(TRAIN), "Study size: tiny (tests), small "
                           "(measured on 2 CPU cores, base trained separately: SR models 33 min in "
                           "parallel, reference 9 min, sweeps 30 min), full (the configs' own sizes).")
_ROOT = flags.DEFINE_string("workdir_root", None, "Workdirs of every step go below this "
                            "(default workdirs/aug_study, workdirs/aug_study_tiny for --scale=tiny).")
_BASE = flags.DEFINE_string("base_workdir", "", "Use this trained base workdir (its latest "
                            "checkpoint) instead of training the base in <workdir_root>/base.")
_DOCS = flags.DEFINE_string("docs_dir", "docs", "Where augmentation_study.md and its "
                            "augmentation_study/ folder of PNGs go.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "TFDS data_dir for every stage ('' = default).")
_RUNNER = flags.DEFINE_enum("runner", "subprocess", ["subprocess", "inprocess"],
                            "Run each cdm.main command as a subprocess, or call the same entry "
                            "functions in this process (faster start, used by the tests).")
_FORCE = flags.DEFINE_list("force", [], "Steps to rerun even if finished (e.g. sweep_aug,report).")
_SR_STEPS = flags.DEFINE_integer("sr_steps", None, "Training steps of both SR models (default: "
                                 "the scale's, TRAIN).")
_SR_BATCH = flags.DEFINE_integer("sr_batch", None, "Batch size of both SR models (default: the "
                                 "scale's).")
_SR_SAMPLE_STEPS = flags.DEFINE_integer(
    "sr_sample_steps", None, "DDIM steps of the SR stage in the sweeps (default: the scale's, "
    "configs/cascades/mnist_study.py); a change reruns both sweeps.")
_BASE_SAMPLE_STEPS = flags.DEFINE_integer(
    "base_sample_steps", None, "DDIM steps of the base stage in the sweeps (default: the "
    "scale's); fewer steps give worse low-res samples, i.e. a larger train / test mismatch for "
    "the SR model. The truncated form needs levels on this chain (1 + k * 1000 / steps).")
_AUG_MAX_LEVEL = flags.DEFINE_integer(
    "aug_max_level", None, "Train the augmented SR model on s ~ U{0..N} instead of the config's "
    "augment.max_level (1000 = the whole chain); a narrower range spends its training on the "
    "levels the sweep uses. Also drops swept levels above N.")
_AUG_LEVELS = flags.DEFINE_list(
    "aug_levels", [], "Levels s of the augmented sweep (default: the scale's, "
    "configs/cascades/mnist_study.py).")
_TRUNCATED_LEVELS = flags.DEFINE_list(
    "truncated_levels", [], "Levels of the truncated form (on the base's DDIM chain, "
    "1 + k * 1000 / base steps; default: the scale's).")
_ONLY = flags.DEFINE_list("only", [], "Run only these steps (e.g. sr_noaug, or reference,sweep_aug "
                         "in a second process while sr_noaug trains) and skip the report.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the commands and exit.")


# ------------------------------------------------------------------------------------ commands

def _rel(path: str) -> str:
  """``path`` relative to the repo when it lies inside it (commands read as typed from the root)."""
  ap = os.path.abspath(path)
  return os.path.relpath(ap, REPO) if ap.startswith(REPO + os.sep) else ap


def command_line(argv) -> str:
  return "python -m cdm.main " + shlex.join(argv)


def parse_main_args(argv):
  """``(config, workdir, mode)`` exactly as ``python -m cdm.main <argv>`` would parse them."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  fv = flags.FlagValues()
  full = ["cdm.main"] + list(argv)
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True,
                                  sys_argv=full)
  flags.DEFINE_string("workdir", None, "", flag_values=fv)
  flags.DEFINE_string("mode", "train", "", flag_values=fv)
  flags.DEFINE_string("base_samples", None, "", flag_values=fv)
  cwd = os.getcwd()
  os.chdir(REPO)  # relative config paths, as for the subprocess runner
  try:
    fv(full)
  finally:
    os.chdir(cwd)
  return fv.config, os.path.join(REPO, fv.workdir), fv.mode


def run_main(argv, *, runner: str, log_path: str) -> None:
  """Runs ``python -m cdm.main <argv>`` (from the repo root), or its entry function in-process."""
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  if runner == "subprocess":
    with open(log_path, "w") as log:
      log.write(command_line(argv) + "\n")
      log.flush()
      proc = subprocess.run([sys.executable, "-m", "cdm.main"] + list(argv), cwd=REPO,
                            stdout=log, stderr=subprocess.STDOUT, check=False)
    if proc.returncode:
      with open(log_path) as f:
        tail = f.read()[-3000:]
      raise RuntimeError(f"{command_line(argv)} failed (exit {proc.returncode}); log "
                         f"{log_path}:\n{tail}")
    return
  with open(log_path, "w") as log:
    log.write(command_line(argv) + "\n(in-process)\n")
  config, workdir, mode = parse_main_args(argv)
  if mode == "train":
    from cdm import train  # pylint: disable=g-import-not-at-top
    train.train_and_evaluate(config, workdir)
  elif mode == "eval":
    from cdm import evaluate  # pylint: disable=g-import-not-at-top
    evaluate.evaluate_cascade(config, workdir)
  elif mode == "sweep":
    from cdm import evaluate  # pylint: disable=g-import-not-at-top
    evaluate.sweep(config, workdir)
  else:
    raise ValueError(f"mode {mode!r} is not used by the study")


def final_step(workdir: str):
  """Largest finished checkpoint step in ``workdir/checkpoints`` (None if none)."""
  d = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(d):
    return None
  steps = [int(n) for n in os.listdir(d) if n.isdigit() and os.path.isdir(os.path.join(d, n))]
  return max(steps) if steps else None


@dataclasses.dataclass
class Step:
  name: str
  argv: list  # cdm.main arguments ([] for the in-process report / noise-floor work)
  workdir: str
  output: str  # file whose presence means the step is finished
  what: str  # one line for the results page


def build_steps(scale: str, root: str, base_workdir: str = "", data_dir: str = "",
                sr_steps=None, sr_batch=None, sr_sample_steps=None, base_sample_steps=None,
                aug_max_level=None, aug_levels=(), truncated_levels=()):
  """The study's cdm.main commands, in order."""
  t = dict(TRAIN[scale])
  t["sr_steps"] = sr_steps or t["sr_steps"]
  t["sr_batch"] = sr_batch or t["sr_batch"]
  variant = "tiny" if scale == "tiny" else ""
  cv = scale  # cascade variant
  dd_stage = [f"--config.data.data_dir={data_dir}"] if data_dir else []
  dd_casc = ([f"--config.stages.base.config.data.data_dir={data_dir}",
              f"--config.stages.sr.config.data.data_dir={data_dir}"] if data_dir else [])
  r = _rel(root)
  base = _rel(base_workdir) if base_workdir else f"{r}/base"
  steps = []

  def train_step(name, config, workdir, num_steps, batch, what, extra=()):
    argv = [f"--config={config}{':' + variant if variant else ''}", f"--workdir={workdir}"]
    if num_steps:
      argv.append(f"--config.train.num_steps={num_steps}")
    if batch:
      argv.append(f"--config.train.batch_size={batch}")
    argv += list(extra)
    steps.append(Step(name, argv + dd_stage, workdir, "", what))

  if not base_workdir:
    train_step("base", BASE_CONFIG, base, t["base_steps"], t["base_batch"], "train the 16x16 base")
  for kind in ("aug", "noaug"):
    narrow = kind == "aug" and aug_max_level is not None
    train_step(f"sr_{kind}", SR_CONFIG[kind], f"{r}/sr_{kind}", t["sr_steps"], t["sr_batch"],
               "train 16->32 SR " + ("with Gaussian augmentation amortised over s" if kind == "aug"
                                      else "without augmentation")
               + (f" in [0, {aug_max_level}]" if narrow else ""),
               [f"--config.augment.max_level={aug_max_level}"] if narrow else [])
  levels = sweep_levels(scale, aug_max_level, aug_levels, truncated_levels)
  ckpts = [f"--config.stages.base.checkpoint={base}"]
  steps.append(Step("reference", [
      "--mode=eval", f"--config={CASCADE}:{cv}", f"--workdir={r}/reference",
      f"--config.eval.samples={r}/reference/real_train.npz"] + ckpts
      + [f"--config.stages.sr.checkpoint={r}/sr_aug"] + dd_casc,
      f"{r}/reference", "eval.json", "real data: classifier-FID / CAS of N real images"))
  for kind in ("aug", "noaug"):
    steps.append(Step(f"sweep_{kind}", [
        "--mode=sweep", f"--config={CASCADE}:{cv}{',noaug' if kind == 'noaug' else ''}",
        f"--workdir={r}/sweep_{kind}"] + ckpts + [f"--config.stages.sr.checkpoint={r}/sr_{kind}"]
        + ([f"--config.stages.sr.num_steps={sr_sample_steps}"] if sr_sample_steps else [])
        + ([f"--config.stages.base.num_steps={base_sample_steps}"] if base_sample_steps else [])
        + (levels if kind == "aug" else []) + dd_casc, f"{r}/sweep_{kind}", "sweep.json",
        "sample the cascade and score every s" if kind == "aug"
        else "sample the cascade without augmentation and score it"))
  return steps, base


def sweep_levels(scale: str, aug_max_level=None, aug_levels=(), truncated_levels=()) -> list:
  """Overrides of the augmented sweep's levels: explicit ones, or the scale's capped at max_level."""
  if not (aug_max_level is not None or aug_levels or truncated_levels):
    return []
  from configs.cascades import mnist_study  # pylint: disable=g-import-not-at-top
  p = mnist_study.SCALES[scale]
  levels = [int(x) for x in aug_levels] or list(p["levels"])
  trunc = [int(x) for x in truncated_levels] or list(p.get("truncated_levels", ()))
  if aug_max_level is not None:
    too_high = [s for s in levels + trunc if s > aug_max_level]
    if too_high and (aug_levels or truncated_levels):  # given explicitly: an error, not a trim
      raise ValueError(f"levels {too_high} exceed --aug_max_level={aug_max_level}: the "
                       "augmented SR model never sees them in training.")
    levels = [s for s in levels if s <= aug_max_level]
    trunc = [s for s in trunc if s <= aug_max_level]
  tup = lambda xs: "(" + "".join(f"{x}," for x in xs) + ")"
  # An empty truncated list means "the same levels" (configs/cascades/mnist_study.py).
  return [f"--config.sweep.aug_levels={tup(levels)}",
          f"--config.sweep.truncated_levels={tup(trunc)}"]


# --------------------------------------------------------------------------------- bookkeeping

def _load_json(path, default):
  try:
    with open(path) as f:
      return json.load(f)
  except (FileNotFoundError, json.JSONDecodeError):
    return default


def _save_json(path, obj):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, sort_keys=True, default=float)
  os.replace(tmp, path)


def _update_record(path, name, rec):
  """Sets one step's record, re-reading the file first (steps may run in parallel processes)."""
  records = _load_json(path, {})
  records[name] = rec
  _save_json(path, records)


def _train_target(argv):
  """train.num_steps of a training command (override, else the config's)."""
  config, _, _ = parse_main_args(argv)
  return int(config.train.num_steps)


def is_done(step: Step, record: dict) -> bool:
  wd = os.path.join(REPO, step.workdir)
  if not step.output:  # training: the final checkpoint exists
    last = final_step(wd)
    return last is not None and last >= _train_target(step.argv)
  outputs = [step.output] + (["noise_floor.json"] if step.name == "reference" else [])
  same = record.get("argv") == step.argv
  if step.name.startswith("sweep_"):  # sampled from checkpoints that have since trained on?
    same = same and record.get("checkpoint_steps") == checkpoint_steps(step.argv)
  return same and all(os.path.exists(os.path.join(wd, o)) for o in outputs)


def checkpoint_steps(argv) -> dict:
  """{stage: latest checkpoint step} of the trained stages a cascade command samples from."""
  out = {}
  for a in argv:
    m = re.fullmatch(r"--config\.stages\.(\w+)\.checkpoint=(.+)", a)
    if m:
      out[m.group(1)] = final_step(os.path.join(REPO, m.group(2)))
  return out


def write_real_samples(argv, n: int, path: str) -> None:
  """The first ``n`` real training images at the SR stage's resolution, as a samples npz."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from cdm import evaluate  # pylint: disable=g-import-not-at-top
  config, _, _ = parse_main_args(argv)
  real = evaluate.load_split(config.stages.sr.config, "train", n)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  np.savez(path, images=real["image"], labels=real["label"].astype(np.int32))


def copy_eval_caches(src: str, dst: str) -> list:
  """Copies the cached feature classifier / reference stats / real CAS classifier to ``dst``."""
  os.makedirs(dst, exist_ok=True)
  copied = []
  for name in sorted(os.listdir(src)):
    if name.startswith(CACHE_PREFIXES) and name.endswith(".npz"):
      if not os.path.exists(os.path.join(dst, name)):
        shutil.copy2(os.path.join(src, name), os.path.join(dst, name))
      copied.append(name)
  return copied


def fid_noise_floor(argv, workdir: str, k: int) -> dict:
  """Classifier-FID of ``k`` disjoint real test subsets of N images (N = samples per setting).

  Their spread is the sampling noise of an FID at this N; their mean is the real-data FID.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  from cdm import evaluate  # pylint: disable=g-import-not-at-top
  config, _, _ = parse_main_args(argv)
  n = int(config.num_samples)
  ev = evaluate.Evaluator(config.stages.sr.config, config.eval, workdir)
  k = max(1, min(k, len(ev.test["image"]) // n))
  rows = [ev(ev.test["image"][i * n:(i + 1) * n], ev.test["label"][i * n:(i + 1) * n], cas=False)
          for i in range(k)]
  fids = [r["fid"] for r in rows]
  return {"num_samples": n, "subsets": k, "fids": fids, "fid_mean": float(np.mean(fids)),
          "fid_std": float(np.std(fids, ddof=1)) if k > 1 else None,
          "label_accuracy_mean": float(np.mean([r.get("label_accuracy", np.nan) for r in rows])),
          "precision_mean": float(np.mean([r.get("precision", np.nan) for r in rows])),
          "recall_mean": float(np.mean([r.get("recall", np.nan) for r in rows]))}


# ------------------------------------------------------------------------------------- verdict

def _spearman(x, y) -> float:
  import numpy as np  # pylint: disable=g-import-not-at-top
  if len(x) < 2:
    return float("nan")
  rx = np.argsort(np.argsort(x)).astype(float)
  ry = np.argsort(np.argsort(y)).astype(float)
  if rx.std() == 0 or ry.std() == 0:
    return float("nan")
  return float(np.corrcoef(rx, ry)[0, 1])


def _strength(delta: float, scale: float, noise) -> str:
  """How strongly a difference ``delta`` (> 0: the claimed direction) supports a claim.

  strong: >= 15% of ``scale`` and >= 3 noise std; moderate: >= 5% and >= 1 std; weak: any positive.
  """
  if not delta > 0:
    return "none"
  rel = delta / scale if scale else 0.0
  if rel >= 0.15 and (not noise or delta >= 3 * noise):
    return "strong"
  if rel >= 0.05 and (not noise or delta >= noise):
    return "moderate"
  return "weak"


_ORDER = {"none": 0, "weak": 1, "moderate": 2, "strong": 3}


def _pick(rows, **kw):
  return [r for r in rows if all(r.get(k) == v for k, v in kw.items())]


def verdict(rows, fid_noise=None) -> dict:
  """Checks the paper's three claims on study rows; returns per-claim results and an overall line.

  Args:
    rows: dicts with ``model`` ("aug" / "noaug"), ``input`` ("generated" / "ground_truth"),
      ``form`` ("non_truncated" / "truncated"), ``aug_level`` s, ``fid`` and optionally
      ``cas_top1``. Lower FID is better.
    fid_noise: standard deviation of an FID at this sample count (the real-data noise floor), or
      None; differences are compared to it when given.

  Claims:
    augmentation_helps: the best augmented cascade (any s, either form) has a lower FID than the
      cascade whose SR model was trained without augmentation.
    nonmonotonic_generated: with generated inputs (non-truncated), FID vs s has its minimum strictly
      inside the swept range, below both ends.
    ground_truth_falls: with ground-truth inputs, the best FID is at the smallest s and FID rises
      with s (Spearman rank correlation >= 0.7).
  """
  claims = {}
  noaug = _pick(rows, model="noaug", input="generated", aug_level=0)
  aug_gen = sorted(_pick(rows, model="aug", input="generated"), key=lambda r: r["aug_level"])
  if noaug and aug_gen:
    base = noaug[0]
    best = min(aug_gen, key=lambda r: r["fid"])
    delta = base["fid"] - best["fid"]
    strength = _strength(delta, base["fid"], fid_noise)
    cas_note = ""
    if "cas_top1" in base and "cas_top1" in best:
      cas_best = max(r.get("cas_top1", float("-inf")) for r in aug_gen)
      cas_note = (f"; CAS top-1 {best['cas_top1']:.3f} at that setting (best over s "
                  f"{cas_best:.3f}) vs {base['cas_top1']:.3f} without augmentation")
    claims["augmentation_helps"] = dict(
        holds=delta > 0, strength=strength, delta=delta,
        best={"form": best["form"], "aug_level": best["aug_level"], "fid": best["fid"]},
        noaug_fid=base["fid"],
        detail=(f"no augmentation: FID {base['fid']:.2f}; best with augmentation: FID "
                f"{best['fid']:.2f} ({best['form'].replace('_', '-')}, s={best['aug_level']}), "
                f"{'lower' if delta > 0 else 'not lower'} by {delta:.2f} "
                f"({100 * delta / base['fid']:.0f}%){cas_note}"))
  nt = [r for r in aug_gen if r["form"] == "non_truncated"]
  if len(nt) >= 3:
    fids = [r["fid"] for r in nt]
    i = min(range(len(nt)), key=lambda j: fids[j])
    interior = 0 < i < len(nt) - 1
    ends = min(fids[0], fids[-1])
    delta = ends - fids[i] if interior else 0.0
    where = ("inside the range" if interior else
             "at the smallest s" if i == 0 else "at the largest s swept")
    claims["nonmonotonic_generated"] = dict(
        holds=interior, strength=_strength(delta, ends, fid_noise) if interior else "none",
        delta=delta, best_aug_level=nt[i]["aug_level"],
        detail=("generated inputs, non-truncated: FID by s = "
                + ", ".join(f"{r['aug_level']}: {r['fid']:.2f}" for r in nt)
                + f"; minimum at s={nt[i]['aug_level']} ({where})"
                + (f", {delta:.2f} below the better end" if interior else "")))
  gt = sorted(_pick(rows, model="aug", input="ground_truth"), key=lambda r: r["aug_level"])
  if len(gt) >= 2:
    s = [r["aug_level"] for r in gt]
    fids = [r["fid"] for r in gt]
    rho = _spearman(s, fids)
    best_first = fids[0] <= min(fids)
    holds = bool(best_first and rho >= 0.7)
    delta = fids[-1] - fids[0]
    monotone = all(b >= a for a, b in zip(fids, fids[1:]))
    claims["ground_truth_falls"] = dict(
        holds=holds, strength=_strength(delta, fids[-1], fid_noise) if holds else "none",
        delta=delta, spearman=rho, monotone=monotone,
        detail=("ground-truth inputs: FID by s = "
                + ", ".join(f"{a}: {b:.2f}" for a, b in zip(s, fids))
                + f"; Spearman(s, FID) = {rho:.2f}, best at s={s[fids.index(min(fids))]}"
                + (", monotone" if monotone else ", not monotone")))
  names = ("augmentation_helps", "nonmonotonic_generated", "ground_truth_falls")
  held = [n for n in names if claims.get(n, {}).get("holds")]
  if not claims.get("augmentation_helps", {}).get("holds"):
    overall = "not reproduced"
  elif len(held) == len(names):
    overall = "reproduced"
  else:
    overall = "partly reproduced"
  strength = (min((claims[n]["strength"] for n in held), key=_ORDER.get) if held else "none")
  missing = [n for n in names if n not in claims]
  summary = (f"{overall}: {len(held)} of {len(names)} claims hold"
             + (f" (weakest support: {strength})" if held else "")
             + (f"; not measurable: {', '.join(missing)}" if missing else ""))
  return {"overall": overall, "strength": strength, "claims": claims, "held": held,
          "summary": summary, "fid_noise": fid_noise}


# -------------------------------------------------------------------------------------- report

def collect_rows(root: str) -> list:
  rows = []
  for kind in ("aug", "noaug"):
    path = os.path.join(root, f"sweep_{kind}", "sweep.json")
    for r in _load_json(path, {}).get("rows", []):
      rows.append({"model": kind, **r})
  return rows


def _plot(rows, reference, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  metrics = [("fid", "classifier-FID (lower is better)"), ("cas_top1", "CAS top-1 (higher is better)")]
  fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
  series = [("aug", "generated", "non_truncated", "augmented SR, generated inputs, non-truncated",
             "C0", "o-"),
            ("aug", "generated", "truncated", "augmented SR, generated inputs, truncated", "C1",
             "s--"),
            ("aug", "ground_truth", "non_truncated", "augmented SR, ground-truth inputs", "C2",
             "^-")]
  for ax, (m, label) in zip(axes, metrics):
    for model, inp, form, name, color, style in series:
      pts = sorted((r["aug_level"], r[m]) for r in _pick(rows, model=model, input=inp, form=form)
                   if m in r)
      if pts:
        ax.plot(*zip(*pts), style, color=color, label=name, ms=5)
    for inp, color, name in (("generated", "C3", "no-aug SR, generated inputs (s=0)"),
                             ("ground_truth", "C4", "no-aug SR, ground-truth inputs")):
      for r in _pick(rows, model="noaug", input=inp):
        if m in r:
          ax.axhline(r[m], color=color, ls=":", lw=1.5, label=name)
    ref = reference.get(m)
    if ref is not None:
      ax.axhline(ref, color="k", ls="-.", lw=1, label="real data (same N)")
      if m == "fid" and reference.get("fid_std"):
        ax.axhspan(ref - reference["fid_std"], ref + reference["fid_std"], color="k", alpha=0.08)
    ax.set_xlabel("conditioning augmentation level s (of 1000)")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
  handles, labels = axes[0].get_legend_handles_labels()
  fig.tight_layout(rect=(0, 0.2, 1, 1))
  fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, frameon=False)
  buf = io.BytesIO()
  fig.savefig(buf, dpi=90, format="png")
  plt.close(fig)
  with open(path, "wb") as f:
    f.write(buf.getvalue())


def _crop_grid(src: str, dst: str, rows: int = 2) -> bool:
  """The first ``rows`` rows of a sweep grid (10 per row, one per class), at 1x pixel scale."""
  if not os.path.exists(src):
    return False
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  img = np.asarray(Image.open(src))
  # Sweep grids: 32 px images, 1 px border, repeated 2x (cdm.evaluate._save_grid).
  scale = 2 if img.shape[1] > 400 else 1
  img = img[::scale, ::scale]
  img = img[:min(img.shape[0], 1 + rows * 33)]
  Image.fromarray(img).save(dst, optimize=True)
  return True


def _fmt(v, nd=3):
  if v is None or (isinstance(v, float) and v != v):  # None or nan
    return ""
  if isinstance(v, float):
    return f"{v:.{nd}f}"
  return str(v)


def _duration(s):
  if s is None:
    return ""
  s = int(round(s))
  return f"{s // 3600}h {s % 3600 // 60:02d}m {s % 60:02d}s" if s >= 3600 else (
      f"{s // 60}m {s % 60:02d}s")


def _span(phases):
  """(seconds from the first recorded start to the last finish, "a and b" overlapping) or None."""
  iv = []
  for p in phases:
    if p.get("started") and p.get("finished"):
      a = datetime.datetime.fromisoformat(p["started"]).timestamp()
      b = datetime.datetime.fromisoformat(p["finished"]).timestamp()
      iv.append((a - float(p.get("earlier_wall_s") or 0.0), b, p["name"]))
  if not iv:
    return None
  overlap = sorted({n for a1, b1, n in iv for a2, b2, m in iv if n != m and a1 < b2 and a2 < b1})
  return (max(b for _, b, _ in iv) - min(a for a, _, _ in iv),
          " and ".join(overlap) if overlap else "")


def write_report(study: dict, docs_dir: str, root: str) -> str:
  """Writes ``<docs_dir>/augmentation_study.md`` and its assets; returns the page path."""
  assets_name = "augmentation_study"
  assets = os.path.join(docs_dir, assets_name)
  os.makedirs(assets, exist_ok=True)
  rows, ref, v, s = study["rows"], study["reference"], study["verdict"], study["settings"]
  _plot(rows, ref, os.path.join(assets, "metric_vs_s.png"))
  _save_json(os.path.join(assets, "results.json"), study)

  # Sample grids: the settings the verdict compares.
  grids = []
  steps = s["sr_steps"]
  claims = v["claims"]
  levels = list(s["aug_levels"])
  picks = [("noaug", "non_truncated", 0, "no-aug SR, generated inputs"),
           ("aug", "non_truncated", 0, "augmented SR, generated inputs, s=0")]
  for form in ("non_truncated", "truncated"):
    cand = [r for r in _pick(rows, model="aug", input="generated", form=form) if r["aug_level"]]
    if cand:
      b = min(cand, key=lambda r: r["fid"])["aug_level"]
      picks.append(("aug", form, b, f"augmented SR, generated inputs, {form.replace('_', '-')} "
                    f"s={b} (best FID of this form)"))
  if levels and levels[-1] and all(p[1:3] != ("non_truncated", levels[-1]) for p in picks):
    picks.append(("aug", "non_truncated", levels[-1],
                  f"augmented SR, generated inputs, s={levels[-1]} (largest)"))
  picks += [("noaug", "ground_truth", 0, "no-aug SR, ground-truth inputs"),
            ("aug", "ground_truth", 0, "augmented SR, ground-truth inputs, s=0")]
  if levels and levels[-1]:
    picks.append(("aug", "ground_truth", levels[-1],
                  f"augmented SR, ground-truth inputs, s={levels[-1]}"))
  for model, form, lvl, label in picks:
    src = os.path.join(root, f"sweep_{model}", "sweep_samples", f"{form}_s{lvl}_steps{steps}.png")
    name = f"samples_{model}_{form}_s{lvl}.png"
    if _crop_grid(src, os.path.join(assets, name)):
      grids.append((label, f"{assets_name}/{name}"))
  base_grid = study.get("base_grid")
  if base_grid and os.path.exists(base_grid):
    shutil.copy2(base_grid, os.path.join(assets, "base_samples.png"))
    grids.insert(0, ("16x16 base model (its training-time sample grid)",
                     f"{assets_name}/base_samples.png"))

  L = []
  L.append("# Conditioning augmentation on the MNIST cascade (issue 9)\n")
  L.append(
      "The paper (CDM, Sec. 4.2; `../shared/PAPER.md` Sec. 3) says a cascade whose super-resolution "
      "(SR) model was trained on clean low-res images is worse than one trained with conditioning "
      "augmentation, because at test time the SR model is fed imperfect base samples; Gaussian noise "
      "augmentation, with the level s chosen after training, fixes it; with generated low-res inputs "
      "quality vs s is non-monotonic, with ground-truth inputs it falls as s grows. This page checks "
      "that on cdm's offline MNIST cascade (16x16 base -> 16->32 SR) with cdm's own commands. "
      "Everything below is generated by `python -m cdm.experiments.augmentation_study` from the "
      "measured numbers (nothing is typed in by hand).\n")
  L.append(f"**Verdict ({study['scale']} scale): {v['summary']}.**\n")
  for n in ("augmentation_helps", "nonmonotonic_generated", "ground_truth_falls"):
    c = claims.get(n)
    if c:
      L.append(f"- `{n}`: **{'holds' if c['holds'] else 'does not hold'}** "
               f"({c['strength']}): {c['detail']}.")
  if v.get("fid_noise"):
    L.append(f"- FID noise at this sample count: std {v['fid_noise']:.2f} over "
             f"{ref.get('subsets')} disjoint sets of {s['num_samples']} real test images "
             "(strength thresholds: strong = at least 15% and 3 std, moderate = 5% and 1 std).")
  L.append("")
  L.append("## Setup\n")
  L.append("| | |\n|---|---|")
  L.append(f"| base | `{s['base_workdir']}` ({BASE_CONFIG}), step {s.get('base_step')} |")
  for kind in ("aug", "noaug"):
    top = s.get("aug_max_level", {}).get(kind)
    L.append(f"| SR {kind} | `{SR_CONFIG[kind]}`, {s['sr_train_steps'][kind]} steps, batch "
             f"{s['sr_batch'][kind]}"
             + (f"; trained on s ~ U{{0..{top}}} per example" if top is not None else
                "; clean low-res inputs") + " |")
  L.append(f"| sampling | {s['num_samples']} samples per setting (balanced labels), base DDIM "
           f"{s['base_steps']} steps, SR DDIM {s['sr_steps']} steps, same seed for every setting |")
  L.append(f"| levels s | {', '.join(map(str, levels))} (1-indexed steps of the 1000-step cosine "
           "schedule: z_s ~ q(z_s \\| z_0) corrupts the base sample); truncated form (the base's "
           f"DDIM chain stops at s and hands z_s over): s = "
           f"{', '.join(map(str, s.get('truncated_levels', levels)))} |")
  L.append(f"| classifier-FID | penultimate features of a small CNN trained on the 4000 real "
           f"training digits ({s['classifier_steps']} steps), reference statistics of that split |")
  L.append(f"| CAS | the same CNN trained only on the {s['num_samples']} samples "
           f"({s['cas_steps']} steps), top-1 accuracy on the 1000 real test digits |")
  L.append(f"| machine | {study['machine']} |")
  L.append("")
  L.append("## Results\n")
  L.append("| SR model | low-res input | form | s | classifier-FID | CAS top-1 | label acc. | "
           "precision | recall |")
  L.append("|---|---|---|---|---|---|---|---|---|")
  for r in sorted(rows, key=lambda r: (r["input"] != "generated", r["model"] != "noaug",
                                       r["form"], r["aug_level"])):
    L.append(f"| {r['model']} | {r['input'].replace('_', '-')} | {r['form'].replace('_', '-')} | "
             f"{r['aug_level']} | {_fmt(r.get('fid'), 2)} | {_fmt(r.get('cas_top1'))} | "
             f"{_fmt(r.get('label_accuracy'))} | {_fmt(r.get('precision'))} | "
             f"{_fmt(r.get('recall'))} |")
  if ref:
    fid_txt = _fmt(ref.get("fid"), 2) + (f" ± {ref['fid_std']:.2f}" if ref.get("fid_std") else "")
    L.append(f"| real data | {s['num_samples']} real test images ({ref.get('subsets')} disjoint "
             f"sets) | | | {fid_txt} | | {_fmt(ref.get('label_accuracy'))} | "
             f"{_fmt(ref.get('precision'))} | {_fmt(ref.get('recall'))} |")
    L.append(f"| real data | {s['num_samples']} real training images | | | "
             f"{_fmt(ref.get('fid_train_n'), 2)} | {_fmt(ref.get('cas_top1'))} | | | |")
    L.append(f"| real data | all 4000 training images (CAS) / 1000 test images (FID) | | | "
             f"{_fmt(ref.get('fid_test_split'), 2)} | {_fmt(ref.get('real_top1'))} | | | |")
  L.append("")
  L.append("FID and CAS are comparable only within this page (cdm's own small classifier, "
           f"{s['num_samples']} samples; FID at small N is biased upwards, which the real-data rows "
           "at the same N show).\n")
  L.append(f"![metric vs s]({assets_name}/metric_vs_s.png)\n")
  L.append("### Samples\n")
  L.append("First 20 SR outputs of each setting, 32x32 (generated inputs: one class per column, "
           "0-9; ground-truth inputs: the first test digits).\n")
  L.append("| setting | samples |\n|---|---|")
  for label, p in grids:
    L.append(f"| {label} | ![{label}]({p}) |")
  L.append("")
  L.append("## Commands and wall times\n")
  L.append("Run from the repository root; each step skips itself when its output exists, so the "
           "study resumes after an interruption and any single step can be rerun by hand (delete "
           "its output file first, or pass `--force=<step>` to the script).\n")
  L.append("```bash\n" + study["study_command"] + "\n```\n")
  L.append("| step | what | command | wall time |\n|---|---|---|---|")
  total = 0.0
  for p in study["phases"]:
    wall = p.get("wall_s")
    total += wall or 0.0
    cmd = p.get("command", "").replace("|", "\\|")
    L.append(f"| {p['name']} | {p['what']} | `{cmd}` | {_duration(wall)}"
             f"{' (' + p['note'] + ')' if p.get('note') else ''} |")
  L.append(f"| | sum of the steps | | {_duration(total)} |")
  L.append("")
  span = _span(study["phases"])
  if span:
    L.append(f"Elapsed from the first step's start to the last step's end: {_duration(span[0])}"
             + (f"; {span[1]} ran in parallel (separate processes started with `--only`), so the "
                "elapsed time is shorter than the sum" if span[1] else "") + ".\n")
  L.append(f"Raw numbers: [`{assets_name}/results.json`]({assets_name}/results.json); per-step "
           f"logs in `{_rel(root)}/logs/`. Generated {study['generated']}.\n")
  L.append("## Caveats\n")
  L.append(
      f"- One seed, {s['num_samples']} samples per setting, {s['sr_train_steps']['aug']}-step SR "
      "models: differences within about one FID noise std are not evidence either way.\n"
      "- The same base samples (same seed and labels) feed every generated-input setting, so the "
      "settings differ only in the SR model, s and the augmentation form.\n"
      "- classifier-FID and CAS use cdm's small CNN, not Inception / ResNet-50: absolute values are "
      "not comparable with the paper's ImageNet numbers, only the directions are.\n")
  path = os.path.join(docs_dir, "augmentation_study.md")
  with open(path, "w") as f:
    f.write("\n".join(L))
  return path


# ---------------------------------------------------------------------------------------- main

def _machine() -> str:
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  import jax  # pylint: disable=g-import-not-at-top
  return (f"{os.cpu_count()} CPU cores ({cpu}), {jax.device_count()} JAX "
          f"{jax.devices()[0].platform} device(s), jax {jax.__version__}")


def run_study(scale: str = "small", workdir_root: str | None = None, base_workdir: str = "",
              docs_dir: str = "docs", data_dir: str = "", runner: str = "subprocess",
              force=(), dry_run: bool = False, sr_steps=None, sr_batch=None,
              only=(), sr_sample_steps=None, base_sample_steps=None, aug_max_level=None,
              aug_levels=(), truncated_levels=()) -> dict:
  """Runs (or resumes) every step of the study and writes the results page; returns study.json."""
  root = os.path.abspath(workdir_root or ("workdirs/aug_study_tiny" if scale == "tiny"
                                          else "workdirs/aug_study"))
  docs_dir = os.path.abspath(docs_dir)
  steps, base = build_steps(scale, root, os.path.abspath(base_workdir) if base_workdir else "",
                            data_dir, sr_steps, sr_batch, sr_sample_steps, base_sample_steps,
                            aug_max_level, aug_levels, truncated_levels)
  study_cmd = ["nice", "-n", "5", "python", "-m", "cdm.experiments.augmentation_study",
               f"--scale={scale}", f"--workdir_root={_rel(root)}"]
  optional = {"base_workdir": _rel(base_workdir) if base_workdir else "", "data_dir": data_dir,
              "sr_steps": sr_steps, "sr_batch": sr_batch, "sr_sample_steps": sr_sample_steps,
              "base_sample_steps": base_sample_steps, "aug_max_level": aug_max_level,
              "aug_levels": ",".join(map(str, aug_levels)),
              "truncated_levels": ",".join(map(str, truncated_levels))}
  study_cmd += [f"--{name}={value}" for name, value in optional.items()
                if value or (name == "aug_max_level" and value is not None)]
  if dry_run:
    for st in steps:
      print(f"# {st.name}: {st.what}\n{command_line(st.argv)}")
    return {}
  # Steps share compilations (the base sampler, the evaluation classifiers) through JAX's
  # persistent cache; subprocesses inherit the variable.
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(root, "jax_cache"))
  record_path = os.path.join(root, "study_phases.json")
  records = _load_json(record_path, {})
  base_abs = os.path.join(REPO, base)
  needs_base = [st.name for st in steps if st.name in ("reference", "sweep_aug", "sweep_noaug")
                and (not only or st.name in only)]
  if base_workdir and needs_base and final_step(base_abs) is None:
    raise FileNotFoundError(f"--base_workdir={base_workdir} holds no checkpoint, which "
                            f"{', '.join(needs_base)} need: train it first (python -m cdm.main --config={BASE_CONFIG} --workdir={base_workdir}).")
  for st in steps:
    if only and st.name not in only:
      continue
    records = _load_json(record_path, {})  # another process may run other steps (--only)
    rec = records.get(st.name, {})
    wd = os.path.join(REPO, st.workdir)
    if st.name not in force and is_done(st, rec):
      logging.info("[study] %s: done (%s), skipped.", st.name, st.workdir)
      print(f"[study] {st.name}: already done, skipped", flush=True)
      if not rec:
        _update_record(record_path, st.name, {"argv": st.argv, "wall_s": None,
                                              "note": "finished before this run"})
      continue
    print(f"[study] {st.name}: {command_line(st.argv)}", flush=True)
    t0 = time.perf_counter()
    extra = {"started": datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds")}
    if st.name == "reference":
      config, _, _ = parse_main_args(st.argv)
      write_real_samples(st.argv, int(config.num_samples),
                         os.path.join(REPO, st.workdir, "real_train.npz"))
    if st.name.startswith("sweep_"):
      copy_eval_caches(os.path.join(root, "reference"), wd)
      if os.path.exists(os.path.join(wd, "sweep.json")):
        os.remove(os.path.join(wd, "sweep.json"))  # stale (other settings): redo
    if st.name == "reference" and os.path.exists(os.path.join(wd, "eval.json")):
      os.remove(os.path.join(wd, "eval.json"))
    resumed_from = final_step(wd) if not st.output else None
    run_main(st.argv, runner=runner, log_path=os.path.join(root, "logs", f"{st.name}.log"))
    if st.name.startswith("sweep_"):
      extra["checkpoint_steps"] = checkpoint_steps(st.argv)
    if st.name == "reference":
      t1 = time.perf_counter()
      nf = fid_noise_floor(st.argv, wd, NOISE_SUBSETS[scale])
      _save_json(os.path.join(wd, "noise_floor.json"), nf)
      extra["noise_floor_s"] = time.perf_counter() - t1
    # Time earlier runs spent on this step: an interrupted attempt (recorded by hand, see the
    # page), or the run that trained this workdir to fewer steps before this one resumed it.
    earlier = float(rec.get("earlier_wall_s", 0.0))
    if not st.output and resumed_from is not None and rec.get("wall_s"):
      earlier = float(rec["wall_s"])  # already includes that run's own earlier time
      rec = dict(rec, note=f"resumed from step {resumed_from}; the wall time includes the run "
                 "that trained it that far")
    wall = time.perf_counter() - t0 + earlier
    if earlier:
      extra.update(earlier_wall_s=earlier, note=rec.get("note", ""))
    _update_record(record_path, st.name, {
        "argv": st.argv, "wall_s": wall, "finished": datetime.datetime.now(
            datetime.timezone.utc).isoformat(timespec="seconds"), **extra})
    print(f"[study] {st.name}: {_duration(wall)}", flush=True)
  if only:
    return {}
  records = _load_json(record_path, {})

  # --------------------------------------------------------------- results
  t0 = time.perf_counter()
  rows = collect_rows(root)
  ref_eval = _load_json(os.path.join(root, "reference", "eval.json"), {})
  nf = _load_json(os.path.join(root, "reference", "noise_floor.json"), {})
  m = ref_eval.get("metrics", {})
  reference = {"fid": nf.get("fid_mean"), "fid_std": nf.get("fid_std"),
               "subsets": nf.get("subsets"), "label_accuracy": nf.get("label_accuracy_mean"),
               "precision": nf.get("precision_mean"), "recall": nf.get("recall_mean"),
               "fid_train_n": m.get("fid"), "cas_top1": m.get("cas_top1"),
               "real_top1": m.get("real_top1"),
               "fid_test_split": ref_eval.get("metrics_real_test_split", {}).get("fid")}
  v = verdict(rows, nf.get("fid_std"))
  sweep_cfg, _, _ = parse_main_args(next(st.argv for st in steps if st.name == "sweep_aug"))
  sr_steps = {k: _train_target(next(st.argv for st in steps if st.name == f"sr_{k}"))
              for k in ("aug", "noaug")}
  sr_batch, trained_top = {}, {}
  for k in ("aug", "noaug"):
    c, _, _ = parse_main_args(next(st.argv for st in steps if st.name == f"sr_{k}"))
    sr_batch[k] = int(c.train.batch_size)
    trained_top[k] = int(c.augment.max_level) if c.augment.gaussian else None
  base_step = final_step(base_abs)
  base_grid = (os.path.join(base_abs, "samples", f"step_{base_step:08d}.png")
               if base_step is not None else "")
  settings = {"num_samples": int(sweep_cfg.num_samples),
              "base_steps": int(sweep_cfg.stages.base.num_steps),
              "sr_steps": int(sweep_cfg.stages.sr.num_steps),
              "aug_levels": [int(x) for x in sweep_cfg.sweep.aug_levels],
              "truncated_levels": [int(x) for x in (tuple(sweep_cfg.sweep.get(
                  "truncated_levels", ())) or sweep_cfg.sweep.aug_levels) if x],
              "classifier_steps": int(sweep_cfg.eval.classifier_steps),
              "cas_steps": int(sweep_cfg.eval.cas_steps),
              "base_workdir": base, "base_step": base_step, "sr_train_steps": sr_steps,
              "sr_batch": sr_batch, "aug_max_level": trained_top}
  phases = []
  for st in steps:
    rec = records.get(st.name, {})
    phases.append({"name": st.name, "what": st.what, "command": command_line(st.argv),
                   "wall_s": rec.get("wall_s"), "note": rec.get("note", ""),
                   "started": rec.get("started"), "finished": rec.get("finished"),
                   "earlier_wall_s": rec.get("earlier_wall_s")})
  if base_workdir:
    phases.insert(0, {"name": "base", "what": "train the 16x16 base (done separately)",
                      "command": f"python -m cdm.main --config={BASE_CONFIG} --workdir={base}",
                      "wall_s": None, "note": "existing workdir, not timed here"})
  study = {"scale": scale, "rows": rows, "reference": reference, "verdict": v,
           "settings": settings, "phases": phases, "study_command": shlex.join(study_cmd),
           "machine": _machine(), "base_grid": base_grid if os.path.exists(base_grid) else "",
           "generated": datetime.datetime.now(datetime.timezone.utc).strftime(
               "%Y-%m-%d %H:%M UTC")}
  page = write_report(study, docs_dir, root)
  study["page"] = page
  study["report_s"] = time.perf_counter() - t0
  _save_json(os.path.join(root, "study.json"), study)
  print(f"[study] {v['summary']}\n[study] wrote {page}", flush=True)
  return study


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  run_study(_SCALE.value, _ROOT.value, _BASE.value, _DOCS.value, _DATA_DIR.value, _RUNNER.value,
            tuple(_FORCE.value), _DRY_RUN.value, _SR_STEPS.value, _SR_BATCH.value,
            tuple(_ONLY.value), _SR_SAMPLE_STEPS.value, _BASE_SAMPLE_STEPS.value,
            _AUG_MAX_LEVEL.value, tuple(_AUG_LEVELS.value), tuple(_TRUNCATED_LEVELS.value))


if __name__ == "__main__":
  app.run(main)
