"""The conditioning-augmentation study's cascade (issue 9; docs/augmentation_study.md).

16x16 base (configs/mnist/base16.py) -> 16->32 SR trained with Gaussian augmentation amortised over s
(configs/mnist/sr16_32.py), or without it (variant ``noaug``: configs/mnist/sr16_32_noaug.py). The
variant also picks the study's scale: ``small`` (default: the run on a 2-core CPU), ``full`` or
``tiny`` (tests), e.g. ``configs/cascades/mnist_study.py:small,noaug``. ``python -m
cdm.experiments.augmentation_study`` runs the whole study; one step by hand:

  python -m cdm.main --mode=sweep --config=configs/cascades/mnist_study.py \
      --workdir=workdirs/aug_study/sweep_aug --config.stages.sr.checkpoint=workdirs/aug_study/sr_aug
"""

from cdm import cascade_config as cc

# Per scale: samples per setting, sampling steps (base, SR; DDIM), swept levels s (1-indexed steps of
# the 1000-step cosine schedule; the truncated form needs levels the base's DDIM chain visits,
# 1 + k * 1000 / base_steps) and the evaluation classifiers' training steps.
SCALES = {
    "tiny": dict(num_samples=8, batch_size=8, base_steps=4, sr_steps=4, levels=(0, 251),
                 classifier_steps=20, cas_steps=20, classifier_batch_size=32),
    "small": dict(num_samples=300, batch_size=100, base_steps=50, sr_steps=10,
                  levels=(0, 101, 301, 601), truncated_levels=(301,), classifier_steps=400,
                  cas_steps=40, classifier_batch_size=128),
    "full": dict(num_samples=1000, batch_size=100, base_steps=100, sr_steps=50,
                 levels=(0, 21, 51, 101, 201, 301, 401, 601, 801), classifier_steps=1500,
                 cas_steps=1500, classifier_batch_size=128),
}


def get_config(variant: str = ""):
  tokens = [t for t in variant.replace("+", ",").split(",") if t]
  noaug = "noaug" in tokens
  scales = [t for t in tokens if t != "noaug"]
  if len(scales) > 1 or (scales and scales[0] not in SCALES):
    raise ValueError(f"variant {variant!r}: expected [<scale>][,noaug] with scale in "
                     f"{sorted(SCALES)}.")
  scale = scales[0] if scales else "small"
  p = SCALES[scale]
  stage_variant = "tiny" if scale == "tiny" else ""
  root = "workdirs/aug_study_tiny" if scale == "tiny" else "workdirs/aug_study"
  sr_path = "configs/mnist/sr16_32_noaug.py" if noaug else "configs/mnist/sr16_32.py"
  stages = {
      "base": cc.stage_entry("configs/mnist/base16.py", "workdirs/mnist_base16",
                             variant=stage_variant, sampler="ddim", num_steps=p["base_steps"]),
      "sr": cc.stage_entry(sr_path, f"{root}/sr_{'noaug' if noaug else 'aug'}",
                           variant=stage_variant, sampler="ddim", num_steps=p["sr_steps"]),
  }
  c = cc.cascade_config(stages, ("base", "sr"), num_samples=p["num_samples"],
                        batch_size=p["batch_size"], labels="balanced")
  c.eval.classifier_steps = p["classifier_steps"]
  c.eval.cas_steps = p["cas_steps"]
  c.eval.classifier_batch_size = p["classifier_batch_size"]
  c.eval.precision_recall = scale != "tiny"
  c.sweep.truncated_levels = tuple(p.get("truncated_levels", ()))  # () = the same levels
  c.sweep.stage = "sr"
  c.sweep.ground_truth = True
  if noaug:  # Trained on clean inputs only: s = 0 is the only level it knows.
    c.sweep.aug_levels = (0,)
    c.sweep.aug_forms = ("non_truncated",)
  else:
    c.sweep.aug_levels = tuple(p["levels"])
    c.sweep.aug_forms = ("non_truncated", "truncated")
  return c
