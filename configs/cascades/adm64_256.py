"""guided-diffusion's released class-conditional 64x64 model followed by its 64 -> 256 upsampler
("ADM + its 64->256 upsampler" in PAPER.md section 5), sampled by cdm from converted checkpoints.

Download 64x64_diffusion.pt and 64_256_upsampler.pt (guided-diffusion README), convert once:
  python -m cdm.models.convert --checkpoint=64x64_diffusion.pt --config=configs/adm/adm64_cond.py \
      --out=converted/adm64_cond
  python -m cdm.models.convert --checkpoint=64_256_upsampler.pt --config=configs/adm/adm_up64_256.py \
      --out=converted/adm_up64_256
then:
  python -m cdm.main --mode=sample --config=configs/cascades/adm64_256.py --workdir=workdirs/adm64_256
The upsampler was trained without conditioning augmentation, so its aug level stays 0.
"""

from cdm import cascade_config as cc


def get_config(variant: str = ""):
  stages = {
      "adm64_cond": cc.stage_entry("configs/adm/adm64_cond.py", "converted/adm64_cond",
                                   variant=variant, num_steps=250),
      "adm_up64_256": cc.stage_entry("configs/adm/adm_up64_256.py", "converted/adm_up64_256",
                                     variant=variant, num_steps=250),
  }
  c = cc.cascade_config(stages, ("adm64_cond", "adm_up64_256"), num_samples=50_000, batch_size=256)
  c.eval.features = "inception"
  c.eval.sfid = True  # ADM reports sFID next to FID.
  if variant == "tiny":
    cc.shrink_chain(c)
    c.num_samples, c.batch_size = 8, 8
    c.eval.features = "classifier"
    c.eval.sfid = False
    c.eval.classifier_steps = c.eval.cas_steps = 20
  return c
