"""``--mode=eval`` and ``--mode=sweep``: sample quality of a cascade's last stage.

Features for FID come from the standard Inception-v3 (``eval.features="inception"``, weights from a
local file) or, for datasets without a standard feature network such as MNIST, from a small classifier
trained by cdm on the real training split (``"classifier"``: *classifier-FID*, comparable only to
itself). Reference statistics, the feature classifier and the real-data CAS classifier are cached in
the workdir. Results go to ``eval.json`` / ``sweep.json`` (+ ``sweep.md``, ``sweep.png``) and
TensorBoard.
"""

from __future__ import annotations

import io
import os

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from clu import metric_writers

from cdm import cascade, fileio, images, stage_sampler
from cdm import data as data_lib
from cdm import models
from cdm.evaluation import cas as cas_lib
from cdm.evaluation import classifier as classifier_lib
from cdm.evaluation import frechet
from cdm.evaluation import inception_score as is_lib
from cdm.evaluation import pipeline
from cdm.evaluation import precision_recall as pr_lib


def load_split(stage_config, split: str, max_examples: int = 0, batch_size: int = 256):
  """All (or the first ``max_examples``) examples of a split at the stage's resolution, on the host.

  Returns {"image", "label"[, "low_res"]} numpy arrays (uint8 / int32).
  """
  it = data_lib.create_eval_iterator(stage_config, split=split, batch_size=batch_size,
                                     num_examples=max_examples or None, process_index=0,
                                     process_count=1)
  parts = {}
  for batch in it:
    mask = batch.pop("mask")
    for k, v in batch.items():
      parts.setdefault(k, []).append(v[mask])
  return {k: np.concatenate(v) for k, v in parts.items()}


class Evaluator:
  """Feature network + cached real reference for one stage's resolution and dataset."""

  def __init__(self, stage_config, eval_config, workdir: str):
    self.stage, self.cfg, self.workdir = stage_config, eval_config, workdir
    self.sfid = bool(eval_config.get("sfid", False))
    if self.sfid and eval_config.features != "inception":
      raise ValueError("eval.sfid=True needs Inception features (sFID is defined on Inception's "
                       "mixed_6/conv maps): set --config.eval.features=inception or "
                       "--config.eval.sfid=False.")
    d = stage_config.data
    self.tag = f"{d.dataset.replace('/', '_').replace(':', '_')}_{d.image_size}px_c{d.channels}"
    self.real = load_split(stage_config, eval_config.reference_split,
                           eval_config.reference_examples)
    self.test = load_split(stage_config, d.eval_split)
    if eval_config.features == "classifier":
      path = fileio.join(workdir, f"feature_classifier_{self.tag}.npz")
      params, apply_fn = classifier_lib.train_or_load_classifier(
          path, self.real["image"], self.real["label"], d.num_classes,
          steps=eval_config.classifier_steps, batch_size=eval_config.classifier_batch_size)
      self.feature_fn = classifier_lib.make_feature_fn(apply_fn, params)
      self.label_accuracy = True
    elif eval_config.features == "inception":
      if not eval_config.inception_weights or not os.path.exists(eval_config.inception_weights):
        raise FileNotFoundError(
            f"eval.inception_weights={eval_config.inception_weights!r} is not a file. Download "
            "pt_inception-2015-12-05-6726825d.pth from https://github.com/mseitzer/pytorch-fid/"
            "releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth (or convert it "
            "with python -m cdm.evaluation.inception --convert=X.pth --out=X.npz) and set it.")
      from cdm.evaluation import inception  # pylint: disable=g-import-not-at-top
      self.feature_fn = inception.make_feature_fn(inception.load_params(
          eval_config.inception_weights), spatial=self.sfid)
      self.label_accuracy = False
    else:
      raise ValueError(f"eval.features={eval_config.features!r}: expected 'classifier' or "
                       "'inception'.")
    self.ref = self._reference()

  def _reference(self):
    path = fileio.join(self.workdir, f"reference_{self.tag}_{self.cfg.features}.npz")
    if fileio.exists(path):
      ref = fileio.load_npz(path)
      if not self.sfid or "spatial_mu" in ref:
        return ref
      logging.info("%s has no sFID statistics: recomputing it.", path)
    feats = pipeline.extract_features(self.feature_fn, self.real["image"])
    mu, sigma = frechet.compute_statistics(feats["features"])
    ref = {"mu": mu, "sigma": sigma, "features": feats["features"][:10_000]}
    if "spatial_features" in feats:
      ref["spatial_mu"], ref["spatial_sigma"] = frechet.compute_statistics(
          feats["spatial_features"])
    if jax.process_index() == 0:
      fileio.save_npz(path, **ref)
    return ref

  def __call__(self, samples_uint8, labels, *, cas: bool | None = None) -> dict:
    gen = pipeline.extract_features(self.feature_fn, samples_uint8)
    out = {"num_samples": int(len(samples_uint8)),
           "fid": frechet.frechet_distance(*frechet.compute_statistics(gen["features"]),
                                           self.ref["mu"], self.ref["sigma"])}
    if "spatial_features" in gen:
      out["sfid"] = frechet.frechet_distance(
          *frechet.compute_statistics(gen["spatial_features"]), self.ref["spatial_mu"],
          self.ref["spatial_sigma"])
    if not self.label_accuracy and "logits" in gen and len(samples_uint8) >= 10:
      out["is_mean"], out["is_std"] = is_lib.inception_score(gen["logits"])
    if self.label_accuracy and "logits" in gen:
      out["label_accuracy"] = float(np.mean(np.argmax(gen["logits"], -1) == labels))
    if self.cfg.precision_recall:
      out.update(pr_lib.precision_recall(self.ref["features"], gen["features"], k=3))
    if self.cfg.cas if cas is None else cas:
      out.update(cas_lib.classification_accuracy_score(
          samples_uint8, labels, self.test["image"], self.test["label"],
          self.stage.data.num_classes, real_train_images=self.real["image"],
          real_train_labels=self.real["label"], steps=self.cfg.cas_steps,
          batch_size=self.cfg.classifier_batch_size,
          real_classifier_path=fileio.join(self.workdir, f"cas_real_classifier_{self.tag}.npz")))
    return {k: float(v) for k, v in out.items()}


def _write(workdir, name, results, step=0):
  fileio.save_json(fileio.join(workdir, name), results)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  flat = {}
  for key, value in results.items():
    if isinstance(value, dict):
      flat.update({f"{key}/{k}": v for k, v in value.items() if isinstance(v, (int, float))})
    elif isinstance(value, (int, float)):
      flat[key] = value
  writer.write_scalars(step, flat)
  writer.close()


def evaluate_cascade(config, workdir: str) -> dict:
  """Evaluates the last stage's samples (``eval.samples`` or the workdir's, sampling if needed)."""
  workdir = fileio.resolve(workdir)
  last = list(config.order)[-1]
  path = config.eval.samples or fileio.join(workdir, "samples", f"{last}.npz")
  if not fileio.exists(path):
    if config.eval.samples:
      raise FileNotFoundError(f"eval.samples={path!r} does not exist.")
    logging.info("No samples at %s: sampling the cascade first.", path)
    cascade.sample_cascade(config, workdir)
  samples, labels = cascade.load_samples(path)
  stage_cfg = config.stages[last].config
  evaluator = Evaluator(stage_cfg, config.eval, workdir)
  results = {"samples": path, "stage": last, "features": config.eval.features,
             "metrics": evaluator(samples, labels)}
  if config.eval.cas:
    results["metrics_real_test_split"] = evaluator(evaluator.test["image"],
                                                   evaluator.test["label"], cas=False)
  _write(workdir, "eval.json", results)
  logging.info("Evaluation of %s: %s", path, results["metrics"])
  return results


# ------------------------------------------------------------------------------------------ sweep

def _run_stage(sampler, params, labels, low_res, aug_level, *, batch_size, seed, mesh):
  """Runs one stage sampler over all labels in sharded batches -> uint8 images."""
  return images.to_uint8(_run_float(sampler, params, labels, low_res, aug_level, batch_size, seed,
                                    mesh))


def sweep(config, workdir: str) -> dict:
  """The paper's post-training search over the SR stage's conditioning-augmentation level s.

  With ``sweep.classifier_scales`` set, sweeps a stage's classifier-guidance scale instead
  (:func:`cdm.guided_eval.sweep_classifier_scale`).
  """
  if tuple(config.sweep.get("classifier_scales", ())):
    from cdm import guided_eval  # pylint: disable=g-import-not-at-top
    return guided_eval.sweep_classifier_scale(config, workdir)
  workdir = fileio.resolve(workdir)
  order = list(config.order)
  name = config.sweep.stage or order[-1]
  if name not in order or order.index(name) == 0:
    raise ValueError(f"sweep.stage={name!r} must be an SR stage of the cascade {order}.")
  idx = order.index(name)
  entry = config.stages[name]
  if not entry.config.augment.gaussian and any(s for s in config.sweep.aug_levels):
    raise ValueError(f"stage {name!r} was trained without Gaussian augmentation "
                     "(augment.gaussian=False): only aug level 0 applies; set "
                     "--config.sweep.aug_levels=0")
  cascade.check_trained_levels(name, entry, list(config.sweep.aug_levels) + list(
      config.sweep.get("truncated_levels", ())))
  casc = cascade.Cascade(config)
  mesh, bs, seed = casc.mesh, config.batch_size, config.seed
  labels = cascade.make_labels(config.labels, config.num_samples,
                               config.stages[order[0]].config.data.num_classes, seed)
  evaluator = Evaluator(entry.config, config.eval, workdir)
  model = models.create_model(entry.config)
  step_counts = list(config.sweep.num_steps) or [entry.num_steps]

  # Clean outputs of the stages before the swept one, sampled once and shared by every s.
  prev_name = order[idx - 1]
  below = cascade.run_cascade(_prefix(casc, idx), labels, batch_size=bs, seed=seed)
  low_clean = below[prev_name]
  rows = []
  for steps in step_counts:
    sr = stage_sampler.make_stage_sampler(entry.config, model, num_steps=steps,
                                          sampler=entry.sampler)
    sr_noisy = None
    for form in config.sweep.aug_forms:
      levels = config.sweep.aug_levels
      if form == "truncated":  # optional shorter list for the (costlier) truncated form
        levels = tuple(config.sweep.get("truncated_levels", ())) or levels
      for s in levels:
        if form == "truncated":
          if s == 0:
            continue
          sr_noisy = sr_noisy or stage_sampler.make_stage_sampler(
              entry.config, model, num_steps=steps, sampler=entry.sampler, low_res_is_noisy=True)
          prev = config.stages[prev_name]
          base = stage_sampler.make_stage_sampler(
              prev.config, models.create_model(prev.config), num_steps=prev.num_steps,
              sampler=prev.sampler, stop_at=int(s))
          prev_low = None if idx - 1 == 0 else below[order[idx - 2]]
          z_s = _run_float(base, casc.params[prev_name], labels, prev_low, int(prev.aug_level), bs,
                           seed, mesh)
          out = _run_stage(sr_noisy, casc.params[name], labels, z_s, int(s), batch_size=bs,
                           seed=seed + 1, mesh=mesh)
        else:
          out = _run_stage(sr, casc.params[name], labels, low_clean, int(s), batch_size=bs,
                           seed=seed + 1, mesh=mesh)
        metrics = evaluator(out, labels)
        rows.append({"input": "generated", "form": form, "aug_level": int(s),
                     "num_steps": int(steps), **metrics})
        logging.info("sweep %s", rows[-1])
        _save_grid(workdir, f"{form}_s{s}_steps{steps}", out)
    if config.sweep.ground_truth:
      n = min(len(evaluator.test["image"]), config.num_samples)
      gt_low = data_lib.downsample(evaluator.test["image"][:n], entry.config.data.low_res_size)
      gt_labels = evaluator.test["label"][:n]
      for s in config.sweep.aug_levels:
        out = _run_stage(sr, casc.params[name], gt_labels, gt_low, int(s), batch_size=bs,
                         seed=seed + 2, mesh=mesh)
        rows.append({"input": "ground_truth", "form": "non_truncated", "aug_level": int(s),
                     "num_steps": int(steps), **evaluator(out, gt_labels)})
        logging.info("sweep %s", rows[-1])
        _save_grid(workdir, f"ground_truth_s{s}_steps{steps}", out)
  results = {"stage": name, "rows": rows}
  fileio.save_json(fileio.join(workdir, "sweep.json"), results)
  _write_sweep_scalars(workdir, rows)
  if jax.process_index() == 0:
    write_metric_table(fileio.join(workdir, "sweep.md"), rows,
                       ("input", "form", "aug_level", "num_steps"))
    plot_metric_curves(fileio.join(workdir, "sweep.png"), rows, metrics=("fid", "cas_top1"),
                       x="aug_level", xlabel="conditioning augmentation level s",
                       group=lambda r: (r["input"], r["form"], f"{r['num_steps']} steps"))
  return results


def _write_sweep_scalars(workdir, rows):
  """TensorBoard view of a sweep: one curve per (input, form, steps) and metric, x axis = s."""
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  for row in rows:
    series = f"sweep/{row['input']}_{row['form']}_steps{row['num_steps']}"
    writer.write_scalars(int(row["aug_level"]), {
        f"{series}/{k}": v for k, v in row.items() if isinstance(v, float)})
  writer.close()


def _run_float(sampler, params, labels, low, level, bs, seed, mesh):
  """Runs a stage sampler over ``labels`` in sharded batches of ``bs``; float outputs in [-1, 1].

  ``low`` (uint8 images or floats, e.g. a truncated z_s) is the low-res input of an SR stage.
  """
  out = []
  rows = cascade._local_rows(bs, mesh)  # pylint: disable=protected-access
  for b, lo in enumerate(range(0, len(labels), bs)):
    lab = np.resize(labels[lo:lo + bs], bs)
    real = min(bs, len(labels) - lo)
    lo_in = None
    if low is not None:
      chunk = np.resize(low[lo:lo + bs], (bs,) + low.shape[1:])
      chunk = images.to_float(chunk) if chunk.dtype == np.uint8 else chunk
      lo_in = cascade._global(chunk[rows], mesh)  # pylint: disable=protected-access
    key = jax.random.fold_in(jax.random.PRNGKey(seed), b)
    x = sampler(params, key, cascade._global(lab[rows], mesh), lo_in, level)  # pylint: disable=protected-access
    x = multihost_utils.process_allgather(x, tiled=True)
    out.append(np.asarray(x)[:real])
  return np.concatenate(out)


def _prefix(casc, idx):
  """A view of the cascade restricted to its first ``idx`` stages."""
  view = cascade.Cascade.__new__(cascade.Cascade)
  view.__dict__.update(casc.__dict__)
  view.order = casc.order[:idx]
  return view


def _save_grid(workdir, tag, out):
  if jax.process_index() == 0:
    grid = images.make_grid(out[:100], ncols=10)
    images.save_png(fileio.join(workdir, "sweep_samples", f"{tag}.png"), grid,
                    scale=max(1, 64 // out.shape[1]))


METRICS_TO_SHOW = ("fid", "cas_top1", "label_accuracy", "precision", "recall")


def write_metric_table(path, rows, keys, metrics=METRICS_TO_SHOW):
  """A Markdown table of ``rows``: the ``keys`` columns, then each metric some row has."""
  cols = list(keys) + [m for m in metrics if any(m in r for r in rows)]
  lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  for r in rows:
    lines.append("| " + " | ".join(f"{r[c]:.4g}" if isinstance(r.get(c), float) else str(r.get(c, ""))
                                   for c in cols) + " |")
  fileio.write_bytes_atomic(path, ("\n".join(lines) + "\n").encode())


def plot_metric_curves(path, rows, *, metrics, x: str, group, xlabel: str):
  """One panel per metric (those some row has): metric vs ``row[x]``, one curve per ``group(row)``
  (a tuple; its items joined by ", " are the legend), written to ``path`` as PNG."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  metrics = [m for m in metrics if any(m in r for r in rows)]
  fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.5), squeeze=False)
  groups = sorted({group(r) for r in rows})
  for ax, m in zip(axes[0], metrics):
    for g in groups:
      pts = sorted((r[x], r[m]) for r in rows if group(r) == g and m in r)
      if pts:
        ax.plot(*zip(*pts), marker="o", label=", ".join(str(v) for v in g))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(m)
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=7)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, dpi=120, format="png")
  fileio.write_bytes_atomic(path, buf.getvalue())
  plt.close(fig)
