"""Pure-JAX diffusion core: schedules, Gaussian diffusion, samplers, conditioning augmentation."""

from cdm.diffusion.augment import aug_level_for_model, augment_low_res
from cdm.diffusion.gaussian import GaussianDiffusion, create_diffusion
from cdm.diffusion.sampling import classifier_free_guidance, ddim_reverse_loop, sample_loop
from cdm.diffusion.schedules import abar_to_model_time, get_named_beta_schedule, space_timesteps

__all__ = [
    "GaussianDiffusion", "abar_to_model_time", "aug_level_for_model", "augment_low_res",
    "classifier_free_guidance", "create_diffusion", "ddim_reverse_loop",
    "get_named_beta_schedule", "sample_loop", "space_timesteps",
]
