"""cdm: Cascaded Diffusion Models in JAX/Flax."""

__version__ = "0.1.0"
