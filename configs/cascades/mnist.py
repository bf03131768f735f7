"""The MNIST cascade: 16x16 base -> 16->32 SR (with Gaussian conditioning augmentation).

Train both stages first (README), then:
  python -m cdm.main --mode=sample --config=configs/cascades/mnist.py --workdir=workdirs/mnist_cascade
  python -m cdm.main --mode=eval   --config=configs/cascades/mnist.py --workdir=workdirs/mnist_cascade
Change the aug level at sampling: --config.stages.sr.aug_level=100
"""

from cdm import cascade_config as cc


def get_config(variant: str = ""):
  stages = {
      "base": cc.stage_entry("configs/mnist/base16.py", "workdirs/mnist_base16", variant=variant,
                             num_steps=100),
      "sr": cc.stage_entry("configs/mnist/sr16_32.py", "workdirs/mnist_sr16_32", variant=variant,
                           num_steps=100, aug_level=100),
  }
  c = cc.cascade_config(stages, ("base", "sr"), num_samples=100, batch_size=40)
  if variant == "tiny":
    c.num_samples, c.batch_size = 8, 8
    c.eval.classifier_steps = c.eval.cas_steps = 20
    for entry in c.stages.values():
      entry.num_steps = 4  # as the stages' own tiny sample.num_steps: t = 0, 333, 666, 999
  return c
