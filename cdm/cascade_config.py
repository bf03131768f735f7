"""Building blocks of cascade configs (``configs/cascades/*.py``).

A cascade config embeds each stage's full config, so ``--config.stages.sr.config.sample.num_steps``
or ``--config.stages.sr.aug_level=250`` work from the command line like any other override.
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_stage_config(path: str, variant: str = "") -> ml_collections.ConfigDict:
  """Loads ``get_config(variant)`` of a stage config file (relative paths: cwd, then the repo)."""
  candidates = [path, os.path.join(_ROOT, path)]
  for p in candidates:
    if os.path.isfile(p):
      spec = importlib.util.spec_from_file_location(
          "cdm_stage_config_" + os.path.basename(p).replace(".", "_"), p)
      module = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(module)
      return module.get_config(variant) if variant else module.get_config()
  raise FileNotFoundError(f"stage config {path!r} not found (looked in {candidates}).")


def stage_entry(config_path: str, checkpoint: str = "", *, variant: str = "", num_steps=None,
                sampler=None, aug_level: int = 0, aug_form: str = "non_truncated",
                guidance_scale=None, classifier: str = "", classifier_checkpoint: str = "",
                classifier_scale: float = 0.0) -> ml_collections.ConfigDict:
  """One stage of a cascade: its config plus where to load params and how to sample it.

  ``classifier`` (a ``kind = "classifier"`` stage config file), ``classifier_checkpoint`` and
  ``classifier_scale`` > 0 turn on ADM classifier guidance for this stage.
  """
  cfg = load_stage_config(config_path, variant)
  e = ml_collections.ConfigDict()
  e.config_path = config_path  # Stage config file this entry was built from (informational).
  e.config = cfg  # The stage's full config (architecture must match the checkpoint).
  e.checkpoint = checkpoint  # Training workdir, or a directory written by cdm.models.convert.
  e.use_ema = cfg.sample.use_ema  # Sample with EMA params.
  e.sampler = sampler or cfg.sample.sampler  # "ancestral" or "ddim".
  e.num_steps = num_steps or cfg.sample.num_steps  # Respaced sampling steps.
  e.eta = cfg.sample.eta  # DDIM eta.
  e.clip_denoised = cfg.sample.clip_denoised  # Clip predicted x0 to [-1, 1].
  e.dynamic_threshold = cfg.sample.dynamic_threshold  # Imagen percentile; 0 = off.
  e.guidance_scale = cfg.sample.guidance_scale if guidance_scale is None else guidance_scale
  e.aug_level = aug_level  # SR only: conditioning-augmentation level s at sampling (0 = clean).
  e.aug_form = aug_form  # SR only: "non_truncated" or "truncated" (previous stage stops at s).
  e.classifier_path = classifier  # Noisy-classifier stage config file ("" = no classifier).
  e.classifier_config = (load_stage_config(classifier, variant) if classifier  # Its full config.
                         else ml_collections.ConfigDict())
  e.classifier_checkpoint = classifier_checkpoint  # Classifier workdir or cdm.models.convert dir.
  e.classifier_scale = float(classifier_scale)  # ADM classifier-guidance scale s; 0 = unguided.
  return e


def cascade_config(stages: dict, order, *, num_samples: int = 64, batch_size: int = 32,
                   labels: str = "balanced", seed: int = 0) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = seed  # Same seed -> same images.
  c.num_samples = num_samples  # Images to sample through the whole cascade.
  c.batch_size = batch_size  # Global batch per sampling call (multiple of the device count).
  c.labels = labels  # "random", "balanced", "per_class:K" or "3,1,4,...".
  c.order = tuple(order)  # Stage names, lowest resolution first.
  c.stages = ml_collections.ConfigDict(stages)
  c.eval = eval_defaults()
  c.sweep = sweep_defaults()
  return c


def eval_defaults() -> ml_collections.ConfigDict:
  e = ml_collections.ConfigDict()
  e.features = "classifier"  # "inception" (standard FID network) or "classifier" (classifier-FID).
  e.inception_weights = ""  # Local path of pt_inception-2015-12-05 weights (.pth or .npz).
  e.reference_split = "train"  # TFDS split for FID reference statistics (cached in the workdir).
  e.reference_examples = 0  # Real examples for the reference statistics; 0 = the whole split.
  e.classifier_steps = 1500  # Steps to train the feature / CAS classifier.
  e.classifier_batch_size = 128
  e.cas = True  # Also compute the classification accuracy score.
  e.cas_steps = 1500  # Steps for the CAS classifier trained on samples.
  e.samples = ""  # npz to evaluate; "" = the last stage's npz in the workdir (sampled if absent).
  e.precision_recall = True  # Kynkaanniemi et al. precision / recall (k = 3).
  e.sfid = False  # Also sFID (Inception mixed_6/conv features; needs features="inception").
  return e


def sweep_defaults() -> ml_collections.ConfigDict:
  s = ml_collections.ConfigDict()
  s.stage = ""  # SR stage whose aug level is swept ("" = the last stage).
  s.aug_levels = (0, 50, 100, 200, 300, 500)  # Values of s to evaluate.
  s.num_steps = ()  # Optional list of sampling step counts to sweep as well.
  s.aug_forms = ("non_truncated",)  # Forms to sweep ("non_truncated", "truncated").
  s.ground_truth = True  # Also evaluate the SR stage on real low-res inputs.
  s.classifier_scales = ()  # If set: sweep these classifier-guidance scales of sweep.stage instead
  #                           (a stage with a classifier; "" = the first stage).
  return s


def imagenet_cascade(stage_files: dict, order, *, bucket: str = "gs://YOUR_BUCKET/cdm",
                     variant: str = "", aug_levels: dict | None = None) -> ml_collections.ConfigDict:
  """An ImageNet cascade of the paper's stages (PAPER.md sections 4-6).

  Each stage loads the EMA params of ``{bucket}/{name}`` (its training workdir; override with
  ``--config.stages.<name>.checkpoint=...``). Evaluation follows the paper's protocol: Inception FID /
  IS against the training split on 50k samples, CAS, precision / recall; the Inception weights are a
  local file the user downloads once (``--config.eval.inception_weights=...``, see the README).
  """
  aug_levels = aug_levels or {}
  stages = {
      name: stage_entry(path, f"{bucket}/{name}", variant=variant,
                        aug_level=aug_levels.get(name, 0))
      for name, path in stage_files.items()}
  c = cascade_config(stages, order, num_samples=50_000, batch_size=256)
  c.eval.features = "inception"
  c.eval.classifier_steps = 0  # Unused with Inception features.
  c.eval.cas_steps = 20_000
  c.eval.classifier_batch_size = 256
  c.eval.sfid = True
  c.sweep.aug_levels = (0, 250, 500, 1000, 1500, 2000)  # On the base's T=4000 scale.
  c.sweep.aug_forms = ("non_truncated", "truncated")
  if variant == "tiny":
    shrink_chain(c)
    c.num_samples, c.batch_size = 8, 8
    c.eval.features = "classifier"
    c.eval.sfid = False
    c.eval.classifier_steps = c.eval.cas_steps = 20
    c.sweep.aug_levels = (0, 100)
  return c


def shrink_chain(c: ml_collections.ConfigDict) -> None:
  """Tiny cascades: divide every stage's resolutions by one factor so the last stage is 32 px and the
  stages still chain (each tiny stage alone shrinks to <= 32 px, which would break the chain)."""
  from cdm import config_base  # pylint: disable=g-import-not-at-top
  full = max(load_stage_config(c.stages[n].config_path).data.image_size for n in c.order)
  factor = max(1, full // 32)
  for name in c.order:
    stage_full = load_stage_config(c.stages[name].config_path).data
    cfg = c.stages[name].config
    cfg.unlock()
    cfg.data.image_size = stage_full.image_size // factor
    cfg.data.low_res_size = stage_full.low_res_size // factor
    config_base.apply_tiny(cfg)
    config_base.validate(cfg)
    cfg.lock()
