"""``--mode=sweep`` over the classifier-guidance scale of one cascade stage (ADM Sec. 4.3).

Runs when the cascade config sets ``sweep.classifier_scales``: for every scale s the stage
``sweep.stage`` (default: the first stage; it needs a classifier in its entry) is sampled with
ADM classifier guidance at scale s, the later stages run on its outputs as usual, and both the
guided stage's samples and the cascade's final samples are scored with the same FID /
precision-recall / CAS evaluator as ``--mode=eval``. Writes ``sweep_classifier_scale.json``,
``.md`` and ``.png`` (metric vs s), and a sample grid per scale.
"""

from __future__ import annotations


import jax
import ml_collections
from absl import logging

from cdm import cascade, evaluate, fileio, stage_sampler
from cdm import models

METRICS = ("fid", "is_mean", "label_accuracy", "cas_top1", "precision", "recall")


def sweep_classifier_scale(config, workdir: str) -> dict:
  """Samples and evaluates the cascade for each ``sweep.classifier_scales`` value."""
  workdir = fileio.resolve(workdir)
  order = list(config.order)
  name = config.sweep.stage or order[0]
  if name not in order:
    raise ValueError(f"sweep.stage={name!r} is not a stage of the cascade {order}.")
  entry = config.stages[name]
  if not entry.get("classifier_config"):
    raise ValueError(f"sweep.classifier_scales needs a classifier for stage {name!r}: build its "
                     "entry with stage_entry(..., classifier=..., classifier_checkpoint=...).")
  scales = [float(s) for s in config.sweep.classifier_scales]
  # One cascade with the classifier loaded (scale forced > 0 for loading), samplers swapped per s.
  load_cfg = ml_collections.ConfigDict(config.to_dict())
  load_cfg.stages[name].classifier_scale = max(scales + [1.0])
  casc = cascade.Cascade(load_cfg)
  model = models.create_model(entry.config)
  idx = order.index(name)
  stop_at = 0
  if idx + 1 < len(order) and config.stages[order[idx + 1]].aug_form == "truncated":
    stop_at = int(config.stages[order[idx + 1]].aug_level)
  first_cfg = config.stages[order[0]].config
  labels = cascade.make_labels(config.labels, config.num_samples, first_cfg.data.num_classes,
                               config.seed)
  last = order[-1]
  evaluators = {name: evaluate.Evaluator(entry.config, config.eval, workdir)}
  if last != name:
    evaluators[last] = evaluate.Evaluator(config.stages[last].config, config.eval, workdir)
  rows = []
  for s in scales:
    guide = ({"classifier_config": entry.classifier_config, "classifier_scale": s} if s else {})
    casc.samplers[name] = stage_sampler.make_stage_sampler(
        entry.config, model, num_steps=entry.num_steps, sampler=entry.sampler, eta=entry.eta,
        clip_denoised=entry.clip_denoised, dynamic_threshold=entry.dynamic_threshold,
        guidance_scale=entry.guidance_scale, stop_at=stop_at,
        low_res_is_noisy=(idx > 0 and entry.aug_form == "truncated"), **guide)
    # (the unguided sampler of s = 0 ignores the classifier params the cascade passes it)
    out = cascade.run_cascade(casc, labels, batch_size=config.batch_size, seed=config.seed,
                              progress=False)
    for stage, ev in evaluators.items():
      rows.append({"classifier_scale": s, "stage": stage, **ev(out[stage], labels)})
      logging.info("classifier-scale sweep %s", rows[-1])
    if jax.process_index() == 0:
      evaluate._save_grid(workdir, f"classifier_scale_{s:g}", out[name])  # pylint: disable=protected-access
  results = {"stage": name, "rows": rows}
  fileio.save_json(fileio.join(workdir, "sweep_classifier_scale.json"), results)
  if jax.process_index() == 0:
    evaluate.write_metric_table(fileio.join(workdir, "sweep_classifier_scale.md"), rows,
                                ("classifier_scale", "stage"), METRICS)
    evaluate.plot_metric_curves(
        fileio.join(workdir, "sweep_classifier_scale.png"), rows, x="classifier_scale",
        metrics=("fid", "label_accuracy", "cas_top1", "is_mean"), xlabel="classifier scale s",
        group=lambda r: (r["stage"],))
  return results
