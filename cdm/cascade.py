"""Sampling a whole cascade: base stage, then each super-resolution stage on the previous output.

A cascade config (``configs/cascades/*.py``) holds ``stages`` (name -> entry) and ``order``. Each
entry embeds its stage config (so every stage field is overridable from the command line), where to
load params from (a cdm training workdir or a directory written by ``cdm.models.convert``), and how to
sample it. An SR entry's ``aug_level`` s and ``aug_form`` select the conditioning augmentation at
sampling time:
  * ``non_truncated``: the previous stage runs to z_0, which is corrupted to z_s ~ q(z_s | z_0);
  * ``truncated``: the previous stage's reverse chain stops at step s and hands over z_s.

Outputs in ``workdir/samples``: ``<stage>.npz`` (uint8 ``images`` + ``labels``) and ``<stage>.png``.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from tqdm import tqdm

from cdm import checkpointing, fileio, images, sharding, stage_sampler
from cdm import models


def make_labels(spec: str, num_samples: int, num_classes: int, seed: int) -> np.ndarray:
  """Labels from a spec: "random", "balanced" (cycle the classes), "per_class:K", or "3,1,4"."""
  spec = str(spec).strip()
  if spec == "random":
    return np.random.default_rng(seed).integers(0, num_classes, num_samples).astype(np.int32)
  if spec == "balanced":
    return (np.arange(num_samples) % num_classes).astype(np.int32)
  if spec.startswith("per_class:"):
    k = int(spec.split(":", 1)[1])
    return np.repeat(np.arange(num_classes), k).astype(np.int32)
  try:
    given = np.asarray([int(v) for v in spec.split(",")], np.int32)
  except ValueError:
    raise ValueError(f"labels={spec!r}: expected 'random', 'balanced', 'per_class:K' or a "
                     "comma-separated list of class ids.") from None
  if given.min() < 0 or given.max() >= num_classes:
    raise ValueError(f"labels={spec!r}: class ids must lie in [0, {num_classes}).")
  return np.resize(given, num_samples).astype(np.int32)


def load_stage_params(entry, stage_config):
  """Params of a stage: a cdm training workdir (EMA by default) or a converted ADM checkpoint."""
  path = entry.checkpoint
  if not path:
    raise ValueError(f"stage {stage_config.stage_name!r}: set its 'checkpoint' (a training "
                     "workdir or a cdm.models.convert output directory).")
  if fileio.exists(fileio.join(path, "checkpoints")) or path.rstrip("/").endswith("checkpoints"):
    params, step = checkpointing.load_params(path, stage_config, use_ema=entry.use_ema)
    logging.info("Loaded %s params of %s at step %d.", "EMA" if entry.use_ema else "raw",
                 path, step)
    return params
  from cdm.models import convert  # pylint: disable=g-import-not-at-top
  return convert.load_converted(path)


def check_trained_levels(name: str, entry, levels) -> None:
  """Refuses augmentation levels s the SR checkpoint never saw in training.

  A Gaussian-augmented SR model is trained on s ~ U{0..augment.max_level} (CDM Sec. 4.2); a larger s
  at sampling is outside its training distribution. The trained range is read from the training
  workdir's ``config.json`` (written by ``cdm.main``); other checkpoints are not checked.
  """
  path = entry.get("checkpoint", "")
  cfg_path = fileio.join(path, "config.json") if path else ""
  if not cfg_path or not fileio.exists(cfg_path):
    return
  trained = fileio.load_json(cfg_path).get("augment", {})
  if not trained.get("gaussian", False):
    return  # a clean-trained model: evaluate.sweep refuses nonzero levels with its own message
  top = int(trained.get("max_level", trained.get("num_timesteps", 0)))
  too_high = sorted({int(s) for s in levels if int(s) > top})
  if too_high:
    raise ValueError(
        f"stages.{name}: aug level(s) {too_high} exceed the range its checkpoint {path} was trained "
        f"on (augment.max_level={top} in its config.json: s ~ U{{0..{top}}}); use levels <= {top} "
        "or retrain the stage with a larger --config.augment.max_level.")


def classifier_guidance(entry) -> dict:
  """``make_stage_sampler`` keywords for an entry's classifier guidance ({} when unguided)."""
  scale = float(entry.get("classifier_scale", 0.0) or 0.0)
  if not scale:
    return {}
  if not entry.get("classifier_config"):
    raise ValueError(f"stage {entry.config.stage_name!r}: classifier_scale={scale} needs a "
                     "classifier (stage_entry(..., classifier='configs/...classifier.py', "
                     "classifier_checkpoint=...)).")
  return {"classifier_config": entry.classifier_config, "classifier_scale": scale}


def load_classifier_params(entry):
  """Params of an entry's noisy classifier: a cdm training workdir or a converted ADM classifier."""
  cfg = entry.classifier_config
  sub = ml_collections.ConfigDict({"checkpoint": entry.get("classifier_checkpoint", ""),
                                   "use_ema": bool(cfg.sample.use_ema)})
  return load_stage_params(sub, cfg)


class Cascade:
  """The compiled samplers of every stage of a cascade config, ready to run batch by batch."""

  def __init__(self, config, *, mesh=None, params=None):
    self.config = config
    self.order = list(config.order)
    if not self.order:
      raise ValueError("cascade config: 'order' lists no stage.")
    missing = [n for n in self.order if n not in config.stages]
    if missing:
      raise ValueError(f"cascade config: order names {missing}, not in stages "
                       f"{list(config.stages.keys())}.")
    self.mesh = mesh or sharding.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1}))
    self._check_chain()
    for name in self.order[1:]:  # before any checkpoint is loaded
      if (params or {}).get(name) is None:
        check_trained_levels(name, config.stages[name], [config.stages[name].aug_level])
    self.samplers, self.params, self.classifier_params = {}, {}, {}
    for i, name in enumerate(self.order):
      entry = config.stages[name]
      nxt = config.stages[self.order[i + 1]] if i + 1 < len(self.order) else None
      stop_at = int(nxt.aug_level) if nxt is not None and nxt.aug_form == "truncated" else 0
      model = models.create_model(entry.config)
      self.samplers[name] = stage_sampler.make_stage_sampler(
          entry.config, model, num_steps=entry.num_steps, sampler=entry.sampler, eta=entry.eta,
          clip_denoised=entry.clip_denoised, dynamic_threshold=entry.dynamic_threshold,
          guidance_scale=entry.guidance_scale, stop_at=stop_at,
          low_res_is_noisy=(i > 0 and entry.aug_form == "truncated"),
          **classifier_guidance(entry))
      stage_params = (params or {}).get(name) or load_stage_params(entry, entry.config)
      self.params[name] = jax.device_put(stage_params, sharding.replicated(self.mesh))
      if classifier_guidance(entry):  # ADM classifier guidance: the classifier's params too
        cp = (params or {}).get(f"{name}/classifier") or load_classifier_params(entry)
        self.classifier_params[name] = jax.device_put(cp, sharding.replicated(self.mesh))

  def _check_chain(self):
    for prev, name in zip(self.order, self.order[1:]):
      p, c = self.config.stages[prev].config, self.config.stages[name].config
      if c.data.low_res_size != p.data.image_size:
        raise ValueError(
            f"stage {name!r} expects low_res_size={c.data.low_res_size} but stage {prev!r} "
            f"produces {p.data.image_size}x{p.data.image_size} images: fix the cascade order or "
            "the stages' data.image_size / data.low_res_size.")
      if c.data.channels != p.data.channels:
        raise ValueError(f"stage {name!r} has data.channels={c.data.channels}, stage {prev!r} "
                         f"has {p.data.channels}.")
    first = self.config.stages[self.order[0]]
    if first.config.data.low_res_size:
      logging.info("The first stage %r is super-resolution: it needs --base_samples.",
                   self.order[0])
    for name in self.order[1:]:
      e = self.config.stages[name]
      if e.aug_form not in ("non_truncated", "truncated"):
        raise ValueError(f"stages.{name}.aug_form={e.aug_form!r}: expected 'non_truncated' or "
                         "'truncated'.")
      if e.aug_form == "truncated" and not e.aug_level:
        raise ValueError(f"stages.{name}: truncated augmentation needs aug_level > 0.")

  def sample_batch(self, key, labels, start_images=None, *, stages=None):
    """Runs the stages on one batch; returns {stage name: float images in [-1, 1]}."""
    outs = {}
    prev = start_images
    for i, name in enumerate(self.order):
      if stages is not None and name not in stages:
        continue
      entry = self.config.stages[name]
      if i == 0 and start_images is not None:
        outs[name] = prev
        continue
      k = jax.random.fold_in(key, i)
      extra = ({"classifier_params": self.classifier_params[name]}
               if name in self.classifier_params else {})
      prev = self.samplers[name](self.params[name], k, labels, prev, int(entry.aug_level), **extra)
      outs[name] = prev
    return outs


def _global(x, mesh):
  return jax.make_array_from_process_local_data(sharding.batch_sharding(mesh), np.asarray(x))


def _local_rows(n, mesh):
  """This process's contiguous slice of a global batch of n rows."""
  per = n // jax.process_count()
  return slice(jax.process_index() * per, (jax.process_index() + 1) * per)


def run_cascade(casc: Cascade, labels: np.ndarray, *, batch_size: int, seed: int,
                start_images=None, progress=True):
  """Samples ``len(labels)`` images through every stage in batches sharded over all devices.

  The same seed gives the same images: batch b uses ``fold_in(PRNGKey(seed), b)``. Returns
  {stage: uint8 (N, H, W, C)} (on every process).
  """
  n_dev = casc.mesh.devices.size
  if batch_size % n_dev:
    raise ValueError(f"cascade batch_size={batch_size} must be a multiple of the {n_dev} devices.")
  n = len(labels)
  results = {name: [] for name in casc.order}
  batches = range(0, n, batch_size)
  for b, lo in enumerate(tqdm(batches, desc="cascade", disable=not progress
                              or jax.process_index() != 0)):
    lab = labels[lo:lo + batch_size]
    real = len(lab)
    lab = np.resize(lab, batch_size)  # pad the last batch; padded rows are dropped below
    rows = _local_rows(batch_size, casc.mesh)
    start = None
    if start_images is not None:
      s = images.to_float(np.resize(start_images[lo:lo + batch_size],
                                    (batch_size,) + start_images.shape[1:]))
      start = _global(s[rows], casc.mesh)
    key = jax.random.fold_in(jax.random.PRNGKey(seed), b)
    outs = casc.sample_batch(key, _global(lab[rows], casc.mesh), start)
    for name, x in outs.items():
      x = multihost_utils.process_allgather(x, tiled=True)
      results[name].append(images.to_uint8(np.asarray(x))[:real])
  return {name: np.concatenate(v) for name, v in results.items() if v}


def write_stage_outputs(workdir: str, stage_images: dict, labels: np.ndarray, max_grid: int = 100):
  """``<stage>.npz`` and ``<stage>.png`` per stage under workdir/samples (process 0 writes)."""
  out_dir = fileio.join(workdir, "samples")
  paths = {}
  if jax.process_index() != 0:
    return paths
  for name, imgs in stage_images.items():
    npz = fileio.save_npz(fileio.join(out_dir, f"{name}.npz"), images=imgs,
                          labels=labels[:len(imgs)])
    grid = images.make_grid(imgs[:max_grid], ncols=10)
    png = images.save_png(fileio.join(out_dir, f"{name}.png"), grid,
                          scale=max(1, 64 // imgs.shape[1]))
    paths[name] = (npz, png)
    logging.info("Stage %s: wrote %s and %s", name, npz, png)
  return paths


def load_samples(path: str):
  """Reads an npz of samples (``images`` uint8 NHWC, ``labels``)."""
  if not fileio.exists(path):
    raise FileNotFoundError(f"samples file {path} does not exist.")
  f = fileio.load_npz(path)
  if "images" not in f or "labels" not in f:
    raise ValueError(f"{path}: expected arrays 'images' (uint8 NHWC) and 'labels'.")
  return f["images"], f["labels"].astype(np.int32)


def sample_cascade(config, workdir: str, base_samples: str | None = None):
  """The ``--mode=sample`` job: samples the cascade and writes every stage's npz and grid."""
  workdir = fileio.resolve(workdir)
  fileio.makedirs(workdir)
  casc_order = list(config.order)
  start = None
  first_cfg = config.stages[casc_order[0]].config
  if base_samples:
    start, labels = load_samples(base_samples)
    n = min(len(start), config.num_samples)
    start, labels = start[:n], labels[:n]
    if start.shape[1] != first_cfg.data.image_size:
      raise ValueError(
          f"--base_samples holds {start.shape[1]}px images; the first stage {casc_order[0]!r} of "
          f"this cascade produces {first_cfg.data.image_size}px. Start from a stage that matches.")
  else:
    if first_cfg.data.low_res_size:
      raise ValueError(f"the first stage {casc_order[0]!r} is super-resolution: pass "
                       "--base_samples=<npz of its low-res inputs>.")
    labels = make_labels(config.labels, config.num_samples, first_cfg.data.num_classes,
                         config.seed)
  casc = Cascade(config)
  out = run_cascade(casc, labels, batch_size=config.batch_size, seed=config.seed,
                    start_images=start)
  write_stage_outputs(workdir, out, labels)
  fileio.save_json(fileio.join(workdir, "cascade_config.json"), config.to_dict())
  return out, labels
