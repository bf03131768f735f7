"""Stage configs that load OpenAI's released guided-diffusion (ADM) checkpoints into cdm.

The model hyper-parameters are those of guided-diffusion's README flags (``MODEL_FLAGS``); the
diffusion settings are its ``DIFFUSION_FLAGS`` (learned sigma -> learned_range, hybrid loss).
"""

from cdm import config_base
from cdm.models import convert

# guided-diffusion README flags per released checkpoint.
RELEASED = {
    "adm64_cond": dict(
        model=dict(image_size=64, num_channels=192, num_res_blocks=3, attention_resolutions="32,16,8",
                   num_head_channels=64, dropout=0.1, learn_sigma=True, class_cond=True,
                   resblock_updown=True, use_new_attention_order=True, use_scale_shift_norm=True),
        schedule="cosine", checkpoint="64x64_diffusion.pt"),
    "adm128_cond": dict(
        model=dict(image_size=128, num_channels=256, num_res_blocks=2, attention_resolutions="32,16,8",
                   num_heads=4, learn_sigma=True, class_cond=True, resblock_updown=True,
                   use_scale_shift_norm=True),
        schedule="linear", checkpoint="128x128_diffusion.pt"),
    "adm256_cond": dict(
        model=dict(image_size=256, num_channels=256, num_res_blocks=2, attention_resolutions="32,16,8",
                   num_head_channels=64, learn_sigma=True, class_cond=True, resblock_updown=True,
                   use_scale_shift_norm=True),
        schedule="linear", checkpoint="256x256_diffusion.pt"),
    "adm_up64_256": dict(
        model=dict(large_size=256, small_size=64, num_channels=192, num_res_blocks=2,
                   attention_resolutions="32,16,8", num_heads=4, learn_sigma=True, class_cond=True,
                   resblock_updown=True, use_scale_shift_norm=True),
        schedule="linear", checkpoint="64_256_upsampler.pt"),
}


def adm_config(name: str, variant: str = ""):
  spec = RELEASED[name]
  c = convert.model_config_from_guided_diffusion(spec["model"])
  c.stage_name = name
  c.data.dataset = "imagenet2012" if c.data.image_size > 64 else "imagenet_resized/64x64"
  c.data.eval_split = "validation"
  c.data.num_classes = 1000
  c.data.channels = 3
  c.data.random_flip = True
  c.data.cache = False
  c.diffusion.num_timesteps = 1000
  c.diffusion.beta_schedule = spec["schedule"]
  c.diffusion.model_var_type = "learned_range"
  c.diffusion.loss_type = "rescaled_mse"
  c.sample.num_steps = 250
  return config_base.finalize(c, variant)
