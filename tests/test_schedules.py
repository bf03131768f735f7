"""Beta schedules, timestep respacing and the continuous noise-level map."""

import math

import numpy as np
import pytest

from cdm.diffusion import schedules


def test_linear_schedule_scales_with_T():
  b = schedules.get_named_beta_schedule("linear", 1000)
  assert b.dtype == np.float64 and b.shape == (1000,)
  np.testing.assert_allclose([b[0], b[-1]], [1e-4, 0.02], rtol=1e-12)
  assert np.all(np.diff(b) > 0)
  b4 = schedules.get_named_beta_schedule("linear", 4000)
  np.testing.assert_allclose([b4[0], b4[-1]], [2.5e-5, 0.005], rtol=1e-12)


def test_cosine_schedule_matches_closed_form():
  T = 1000
  b = schedules.get_named_beta_schedule("cosine", T)
  assert b.dtype == np.float64 and b.max() <= 0.999 and b[-1] == 0.999
  f = lambda t: math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2
  want = np.array([f(t) / f(0) for t in range(1, T + 1)])
  abar = np.cumprod(1 - b)
  unclipped = np.nonzero(b < 0.999)[0]
  last = unclipped[-1]
  assert last > 990 and np.all(b[:last + 1] < 0.999)
  np.testing.assert_allclose(abar[:last + 1], want[:last + 1], rtol=1e-10)


def test_unknown_schedule_and_bad_T():
  with pytest.raises(ValueError, match="unknown beta schedule"):
    schedules.get_named_beta_schedule("quadratic", 10)
  with pytest.raises(ValueError, match="num_timesteps"):
    schedules.get_named_beta_schedule("linear", 0)


def test_space_timesteps_forms():
  assert schedules.space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
  assert schedules.space_timesteps(1000, "ddim1000") == list(range(1000))
  ten = schedules.space_timesteps(1000, "10")
  assert len(ten) == 10 and ten[0] == 0 and ten[-1] == 999
  assert set(np.diff(ten)) <= {111, 110}
  assert schedules.space_timesteps(1000, 10) == ten == schedules.space_timesteps(1000, [10])
  assert schedules.space_timesteps(1000, "250") == schedules.space_timesteps(1000, 250)
  assert len(schedules.space_timesteps(1000, 250)) == 250
  s = schedules.space_timesteps(300, "10,15,20")
  assert s == schedules.space_timesteps(300, [10, 15, 20]) == sorted(set(s))
  assert len(s) == 45
  assert [sum(lo <= x < lo + 100 for x in s) for lo in (0, 100, 200)] == [10, 15, 20]
  assert {0, 99, 100, 199, 200, 299} <= set(s)
  assert schedules.space_timesteps(7, "") == list(range(7))
  # Unequal sections: the first gets the remainder.
  assert schedules.space_timesteps(10, "2,2,2") == [0, 3, 4, 6, 7, 9]


@pytest.mark.parametrize("spec,match", [
    ("ddim7", "integer stride"), ("11", "cannot keep 11"), ("0", "cannot keep 0"),
    ("abc", "malformed"), ("ddimx", "malformed"), ([], "empty"),
])
def test_space_timesteps_errors(spec, match):
  with pytest.raises(ValueError, match=match):
    schedules.space_timesteps(10, spec)


def test_abar_to_model_time():
  T = 1000
  abar = np.cumprod(1 - schedules.get_named_beta_schedule("cosine", T))
  tau = schedules.abar_to_model_time(abar)
  assert tau.dtype == np.float64
  assert np.all(np.diff(tau) > 0) and tau.min() >= 0 and tau.max() <= 1000
  np.testing.assert_allclose(schedules.abar_to_model_time([1.0, 0.0]), [0.0, 1000.0], atol=1e-9)
  # Inverse of the (unclipped part of the) cosine schedule: step t (0-indexed) -> 1000 (t+1)/T.
  np.testing.assert_allclose(tau[:990], 1000 * np.arange(1, 991) / T, rtol=1e-7)
  lin = schedules.abar_to_model_time(np.cumprod(1 - schedules.get_named_beta_schedule("linear", 50)))
  assert np.all(np.diff(lin) > 0)
