"""config.xla: per-stage XLA compiler options reach the compiled program; bad ones fail early."""

import jax
import jax.numpy as jnp
import pytest

from cdm import cascade_config, config_base, xla_options


def _config(cpu_options):
  c = cascade_config.load_stage_config("configs/mnist/base16.py", "tiny")
  c.unlock()
  c.xla.cpu_options = cpu_options
  c.lock()
  return c


def _library_fusions(config):
  """Compiled HLO of a 3x3 convolution + a matmul jitted with the stage's options."""
  def f(x, w, m):
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y, x.reshape(-1, 32) @ m
  args = (jnp.ones((8, 16, 16, 32)), jnp.ones((3, 3, 32, 32)), jnp.ones((32, 32)))
  hlo = xla_options.jit(f, config, "cpu").lower(*args).compile().as_text()
  return [line for line in hlo.splitlines() if "__ynn_fusion" in line and " fusion(" in line]


def test_default_keeps_convolutions_off_ynnpack_and_dots_on_it():
  """The default drops only the convolution from jax 0.10's YNNPACK set (the measured win)."""
  default = _library_fusions(_config(config_base.CPU_XLA_OPTIONS))
  xla_defaults = _library_fusions(_config(""))
  assert len(xla_defaults) == 2  # XLA's own defaults: the convolution and the dot
  assert len(default) == 1 and "convolution" not in default[0]


def test_options_are_cpu_only_and_parsed():
  c = _config(config_base.CPU_XLA_OPTIONS)
  assert xla_options.for_platform(c, "tpu") is None and xla_options.for_platform(c, "gpu") is None
  assert xla_options.for_platform(c, "cpu") == {
      "xla_cpu_experimental_ynn_fusion_type":
          "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
  assert xla_options.for_platform(_config(""), "cpu") is None


def test_bad_options_fail_before_training_with_the_field_to_change():
  with pytest.raises(ValueError, match="xla.cpu_options"):
    config_base.validate(_config("not_an_option"))
  with pytest.raises(ValueError, match=r"--config\.xla\.cpu_options=''"):
    xla_options.check(_config("xla_cpu_no_such_option=1"))
