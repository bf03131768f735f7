"""The paper's ImageNet 32 -> 64 -> 128 cascade (PAPER.md sections 4-5): class-conditional 32x32 base, then
sr32_64 then sr64_128; the 32 -> 64 stage with non-truncated Gaussian conditioning
augmentation at s=1000 of T=4000 (choose s with --mode=sweep), the last stage with blur augmentation at training only.

Train every stage first (each an independent job, README), then:
  python -m cdm.main --mode=sample --config=configs/cascades/c128.py --workdir=gs://YOUR_BUCKET/cdm/c128 \
      --config.stages.base32.checkpoint=gs://YOUR_BUCKET/cdm/base32   # (same for each stage)
  python -m cdm.main --mode=eval --config=configs/cascades/c128.py --workdir=gs://YOUR_BUCKET/cdm/c128 \
      --config.eval.inception_weights=/path/to/pt_inception-2015-12-05.pth
  python -m cdm.main --mode=sweep --config=configs/cascades/c128.py --workdir=... \
      --config.sweep.stage=sr32_64
"""

from cdm import cascade_config as cc


def get_config(variant: str = ""):
  return cc.imagenet_cascade(
      {
          "base32": "configs/base32.py",
          "sr32_64": "configs/sr32_64.py",
          "sr64_128": "configs/sr64_128.py",
      },
      ("base32", "sr32_64", "sr64_128",), variant=variant, aug_levels={"sr32_64": 1000})
