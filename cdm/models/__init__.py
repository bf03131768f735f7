"""ADM U-Net models for cdm stages, and loading of guided-diffusion checkpoints.

Public API:
  * :class:`UNet`, :func:`create_model` (from a stage config; the noisy classifier of
    :mod:`cdm.models.noisy_classifier` for ``kind = "classifier"``), :func:`param_count`,
    :func:`param_bytes`, :func:`abstract_params`, :func:`init_params`.
  * :mod:`cdm.models.convert`: :func:`convert_guided_diffusion`, :func:`load_converted`,
    :func:`model_config_from_guided_diffusion` (imported lazily: it pulls in orbax).
"""

from cdm.models import noisy_classifier
from cdm.models import unet as _unet
from cdm.models.unet import UNet
from cdm.models.unet import abstract_params
from cdm.models.unet import init_params
from cdm.models.unet import model_kwargs
from cdm.models.unet import param_bytes
from cdm.models.unet import param_count

__all__ = ["UNet", "abstract_params", "create_model", "init_params", "model_kwargs",
           "param_bytes", "param_count"]


def create_model(config):
  """The model of a stage config: the ADM U-Net, or the noisy classifier (``kind = "classifier"``)."""
  if config.get("kind", "diffusion") == "classifier":
    return noisy_classifier.create_classifier(config)
  return _unet.create_model(config)
