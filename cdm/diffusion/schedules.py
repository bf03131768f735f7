"""Noise schedules, timestep respacing and the continuous noise-level map (host-side, float64 numpy).

Conventions follow improved-diffusion: code timesteps are 0-indexed, ``t = 0..T-1``, and
``alphas_cumprod[t]`` is the paper's ``abar_{t+1}``.
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import numpy as np

SCHEDULES = ("linear", "cosine")


def get_named_beta_schedule(name: str, num_timesteps: int) -> np.ndarray:
  """Returns the float64 betas ``(num_timesteps,)`` of a named schedule.

  Args:
    name: ``"linear"``: DDPM's linear betas from 1e-4 to 0.02 at T=1000, both ends scaled by
      ``1000 / T`` (Improved DDPM, Sec. 3.2 / reference code) so any T gives a similar process.
      ``"cosine"``: Improved DDPM eq. 17, ``abar(t) = f(t) / f(0)`` with
      ``f(t) = cos^2(((t/T + 0.008) / 1.008) pi/2)``, ``beta_t = 1 - abar_t / abar_{t-1}`` clipped
      at 0.999 (Improved DDPM Sec. 3.2).
    num_timesteps: T, a positive integer.

  Returns:
    float64 numpy array of betas in (0, 1).

  Raises:
    ValueError: unknown name or non-positive T.
  """
  num_timesteps = int(num_timesteps)
  if num_timesteps < 1:
    raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
  if name == "linear":
    scale = 1000.0 / num_timesteps
    return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)
  if name == "cosine":
    return betas_for_alpha_bar(num_timesteps, _cosine_alpha_bar, max_beta=0.999)
  raise ValueError(f"unknown beta schedule {name!r}; expected one of {SCHEDULES}")


def _cosine_alpha_bar(u: np.ndarray) -> np.ndarray:
  """f(u) of Improved DDPM eq. 17 with u = t/T in [0, 1] (not normalised by f(0))."""
  return np.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2


def betas_for_alpha_bar(num_timesteps: int, alpha_bar, max_beta: float = 0.999) -> np.ndarray:
  """Discretises a continuous ``alpha_bar(u)``, u in [0, 1], into betas (Improved DDPM eq. 17).

  ``beta_i = min(1 - alpha_bar((i+1)/T) / alpha_bar(i/T), max_beta)``; the ratio makes the
  normalisation by ``alpha_bar(0)`` irrelevant.
  """
  u = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
  a = alpha_bar(u)
  return np.minimum(1.0 - a[1:] / a[:-1], max_beta)


def abar_to_model_time(alphas_cumprod) -> np.ndarray:
  """The continuous noise-level conditioning: a monotone map from abar in [0, 1] to [0, 1000].

  ``tau(abar) = 1000 * (1.008 * (2/pi) * arccos(sqrt(abar * f(0))) - 0.008)``, with
  ``f(0) = cos^2(0.008/1.008 * pi/2)``, is the inverse of the cosine schedule (Improved DDPM
  eq. 17): under a cosine schedule of any length T, step t (0-indexed) gets ``tau ~= 1000 (t+1)/T``,
  so a timestep embedding designed for indices in [0, 1000) sees the same range as in index mode.
  It depends on abar alone (SR3-style noise-level conditioning), so a model trained on one schedule
  can be sampled on any respacing of it. Strictly decreasing in abar; tau(1) = 0, tau(0) = 1000.

  Args:
    alphas_cumprod: array-like of abar values in [0, 1].

  Returns:
    float64 numpy array of the same shape, values in [0, 1000].
  """
  abar = np.clip(np.asarray(alphas_cumprod, dtype=np.float64), 0.0, 1.0)
  f0 = _cosine_alpha_bar(np.float64(0.0))
  u = 1.008 * (2.0 / math.pi) * np.arccos(np.sqrt(abar * f0)) - 0.008
  return np.clip(1000.0 * u, 0.0, 1000.0)


def space_timesteps(num_timesteps: int, section_counts: Union[str, int, Sequence[int]]) -> list:
  """Chooses the kept steps of a respaced schedule (Improved DDPM Sec. 4, reference-code syntax).

  Args:
    num_timesteps: T of the original process.
    section_counts: ``"ddimN"``: the DDIM stride ``k`` with ``len(range(0, T, k)) == N``, keeping
      ``0, k, 2k, ...``. Otherwise the T steps are split into ``len(counts)`` nearly equal sections
      (earlier sections get the remainder) and ``counts[i]`` evenly spaced steps, first and last
      included, are kept from section i. Accepts ``"250"``, ``"10,15,20"``, an int, or a list of
      ints. ``""`` keeps every step.

  Returns:
    Sorted list of distinct kept 0-indexed steps.

  Raises:
    ValueError: malformed string, a count that is < 1 or larger than its section, or a DDIM count
      no integer stride achieves.
  """
  T = int(num_timesteps)
  if isinstance(section_counts, str):
    spec = section_counts.strip()
    if spec == "":
      return list(range(T))
    if spec.startswith("ddim"):
      try:
        desired = int(spec[len("ddim"):])
      except ValueError:
        raise ValueError(f"malformed respacing {section_counts!r}; expected 'ddimN'") from None
      for stride in range(1, T + 1):
        if len(range(0, T, stride)) == desired:
          return list(range(0, T, stride))
      raise ValueError(
          f"cannot create exactly {desired} steps with an integer stride from T={T}; "
          f"achievable 'ddim' counts near it: {_near_ddim_counts(T, desired)}")
    try:
      counts = [int(x) for x in spec.split(",")]
    except ValueError:
      raise ValueError(
          f"malformed respacing {section_counts!r}; expected 'N', 'N1,N2,...' or 'ddimN'") from None
  elif isinstance(section_counts, (int, np.integer)):
    counts = [int(section_counts)]
  else:
    counts = [int(x) for x in section_counts]
  if not counts:
    raise ValueError("section_counts is empty")
  if len(counts) > T:
    raise ValueError(f"{len(counts)} sections requested but T={T}")
  size_per, extra = divmod(T, len(counts))
  kept, start = [], 0
  for i, count in enumerate(counts):
    size = size_per + (1 if i < extra else 0)
    if count < 1 or count > size:
      raise ValueError(
          f"section {i} has {size} steps; cannot keep {count} of them (need 1 <= count <= {size})")
    stride = (size - 1) / (count - 1) if count > 1 else 0.0
    kept.extend(start + int(round(j * stride)) for j in range(count))
    start += size
  return sorted(set(kept))


def _near_ddim_counts(T: int, desired: int) -> list:
  counts = sorted({len(range(0, T, k)) for k in range(1, T + 1)})
  return sorted(counts, key=lambda c: abs(c - desired))[:4]
