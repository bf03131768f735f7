"""A guided-diffusion checkpoint, converted by cdm, drives cdm's cascade sampler."""

import json

import numpy as np

from cdm import cascade, cascade_config, models
from cdm.models import convert

PREFIX = "tiny_cond/"


def test_converted_adm_checkpoint_samples_through_the_cascade(shared_dir, tmp_path):
  specs = json.loads((shared_dir / "specs" / "adm_specs.json").read_text())
  args = dict(specs["tiny_cond"]["args"], num_classes=10)
  npz = shared_dir / "specs" / "adm_tiny_cond.npz"
  ref = np.load(npz)
  converted = convert.run(str(npz), str(tmp_path / "converted"), gd_args=args,
                          prefix=PREFIX + "param/")
  stage_file = tmp_path / "tiny_adm.py"
  stage_file.write_text(
      "from cdm.models import convert\n\n\ndef get_config():\n"
      f"  return convert.model_config_from_guided_diffusion({args!r})\n")
  entry = cascade_config.stage_entry(str(stage_file), str(converted), num_steps=4,
                                     sampler="ddim")
  config = cascade_config.cascade_config({"adm": entry}, ("adm",), num_samples=8, batch_size=8,
                                         labels="0,1,2,3,4,5,6,7")
  casc = cascade.Cascade(config)

  # The cascade's stage params reproduce guided-diffusion's own forward pass on its reference input.
  model = models.create_model(entry.config)
  out = model.apply({"params": casc.params["adm"]}, ref[PREFIX + "x"].transpose(0, 2, 3, 1),
                    ref[PREFIX + "t"].astype(np.float32), y=ref[PREFIX + "y"])
  want = ref[PREFIX + "out"].transpose(0, 2, 3, 1)
  assert np.abs(np.asarray(out) - want).max() / np.abs(want).max() < 1e-4

  # ...and the sample job writes its npz and grid like for a cdm-trained stage, deterministically.
  images, labels = cascade.sample_cascade(config, str(tmp_path / "w"))
  saved = np.load(tmp_path / "w" / "samples" / "adm.npz")
  assert saved["images"].shape == (8, 16, 16, 3) and saved["images"].dtype == np.uint8
  np.testing.assert_array_equal(saved["labels"], np.arange(8))
  assert (tmp_path / "w" / "samples" / "adm.png").exists()
  again, _ = cascade.sample_cascade(config, str(tmp_path / "w2"))
  np.testing.assert_array_equal(again["adm"], images["adm"])
