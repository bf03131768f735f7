"""The MNIST cascade with ADM classifier guidance of its base stage (configs/cascades/mnist.py plus
the noisy classifier configs/mnist/classifier16.py).

Train the two stages of the MNIST cascade and the classifier, then:
  python -m cdm.main --mode=sample --config=configs/cascades/mnist_guided.py --workdir=workdirs/mnist_guided
  python -m cdm.main --mode=eval   --config=configs/cascades/mnist_guided.py --workdir=workdirs/mnist_guided
  python -m cdm.main --mode=sweep  --config=configs/cascades/mnist_guided.py --workdir=workdirs/mnist_guided_sweep
The scale: --config.stages.base.classifier_scale=2.0 ; the sweep: --config.sweep.classifier_scales.
"""

from cdm import cascade_config as cc


def get_config(variant: str = ""):
  stages = {
      "base": cc.stage_entry("configs/mnist/base16.py", "workdirs/mnist_base16", variant=variant,
                             num_steps=100, classifier="configs/mnist/classifier16.py",
                             classifier_checkpoint="workdirs/mnist_classifier16",
                             classifier_scale=1.0),
      "sr": cc.stage_entry("configs/mnist/sr16_32.py", "workdirs/mnist_sr16_32", variant=variant,
                           num_steps=100, aug_level=100),
  }
  c = cc.cascade_config(stages, ("base", "sr"), num_samples=100, batch_size=40)
  c.sweep.stage = "base"
  c.sweep.classifier_scales = (0.0, 0.5, 1.0, 2.0, 4.0)
  if variant == "tiny":
    c.num_samples, c.batch_size = 8, 8
    c.stages.base.num_steps = c.stages.sr.num_steps = 4
    c.eval.classifier_steps = c.eval.cas_steps = 20
    c.sweep.classifier_scales = (0.0, 1.0)
  return c
