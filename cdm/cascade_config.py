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
                guidance_scale=None) -> ml_collections.ConfigDict:
  """One stage of a cascade: its config plus where to load params and how to sample it."""
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
  return e


def sweep_defaults() -> ml_collections.ConfigDict:
  s = ml_collections.ConfigDict()
  s.stage = ""  # SR stage whose aug level is swept ("" = the last stage).
  s.aug_levels = (0, 50, 100, 200, 300, 500)  # Values of s to evaluate.
  s.num_steps = ()  # Optional list of sampling step counts to sweep as well.
  s.aug_forms = ("non_truncated",)  # Forms to sweep ("non_truncated", "truncated").
  s.ground_truth = True  # Also evaluate the SR stage on real low-res inputs.
  return s
