"""The FID Inception-v3 network in Flax: 2048-d pool features (FID) and 1008-way logits (IS).

This is the TF "2015-12-05" Inception graph used by TTUR's FID and the improved-GAN Inception Score,
in the form pytorch-fid ported it (``fid_inception_v3``): torchvision's ``Inception3`` with
``num_classes=1008``, no aux head, and the FID patches

  * ``Mixed_5b/5c/5d`` (FIDInceptionA), ``Mixed_6b..6e`` (FIDInceptionC), ``Mixed_7b`` (FIDInceptionE_1):
    the pool branch is a 3x3/1 average pool with padding 1 and ``count_include_pad=False``
    (TF's average pool ignores the padded zeros);
  * ``Mixed_7c`` (FIDInceptionE_2): the pool branch is a 3x3/1 *max* pool with padding 1;
  * input resized to 299x299 bilinearly (half-pixel centres, no antialiasing, like
    ``F.interpolate(..., align_corners=False)``), in [-1, 1]; uint8 images map as ``x / 127.5 - 1``
    (pytorch-fid's ``2 * (x / 255) - 1``).

Outputs: ``pool`` = the global average of ``Mixed_7c`` (2048-d, the FID features), ``logits`` =
``fc(pool)`` (1008 classes, the graph's pre-softmax; dropout is the identity at inference).
Numbers match pytorch-fid's, which differ slightly from TTUR's TF FID (TF resizes differently).

Weights. Download the pytorch-fid port (no internet access is attempted by this module):

    https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth

then either load the .pth directly (needs ``torch``), or convert it once to an .npz (needs ``torch``
once) and load the .npz anywhere::

    python -m cdm.evaluation.inception --convert=pt_inception-2015-12-05-6726825d.pth \\
        --out=pt_inception-2015-12-05.npz

The .npz holds the state_dict unchanged (keys such as ``Conv2d_1a_3x3.conv.weight``,
``Mixed_5b.branch_pool.bn.running_var``, ``fc.weight``). Mapping to the Flax params
(``params[block][conv]["kernel" | "bias"]``, ``params["fc"]``):

  * conv ``W`` (O, I, kh, kw) -> HWIO (kh, kw, I, O), with the following BatchNorm (eps 0.001) folded in:
    ``kernel = W * g``, ``bias = beta - running_mean * g`` with ``g = gamma / sqrt(running_var + 1e-3)``;
  * ``fc.weight`` (1008, 2048) -> ``kernel`` (2048, 1008); ``fc.bias`` -> ``bias``;
  * ``*.num_batches_tracked`` is ignored; any other missing, unexpected or mis-shaped key is an error.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import os
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")
BN_EPS = 1e-3
NUM_CLASSES = 1008
FEATURE_DIM = 2048
INPUT_SIZE = 299
MIN_INPUT_SIZE = 75  # Smallest input the un-resized network accepts.
SPATIAL_CHANNELS = 7  # sFID: channels of mixed_6/conv kept (guided-diffusion evaluator).


@dataclasses.dataclass(frozen=True)
class ConvSpec:
  """A conv + BatchNorm + ReLU layer (torchvision ``BasicConv2d``): channels, kernel, stride, padding."""
  cin: int
  cout: int
  kernel: tuple[int, int]
  stride: tuple[int, int] = (1, 1)
  padding: tuple[int, int] = (0, 0)


def _pair(v) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


def _spec(cin, cout, k, s=1, p=0) -> ConvSpec:
  return ConvSpec(cin, cout, _pair(k), _pair(s), _pair(p))


def _block_a(cin, pool_features):
  return {"branch1x1": _spec(cin, 64, 1),
          "branch5x5_1": _spec(cin, 48, 1), "branch5x5_2": _spec(48, 64, 5, p=2),
          "branch3x3dbl_1": _spec(cin, 64, 1), "branch3x3dbl_2": _spec(64, 96, 3, p=1),
          "branch3x3dbl_3": _spec(96, 96, 3, p=1),
          "branch_pool": _spec(cin, pool_features, 1)}


def _block_b(cin):
  return {"branch3x3": _spec(cin, 384, 3, s=2),
          "branch3x3dbl_1": _spec(cin, 64, 1), "branch3x3dbl_2": _spec(64, 96, 3, p=1),
          "branch3x3dbl_3": _spec(96, 96, 3, s=2)}


def _block_c(cin, c7):
  return {"branch1x1": _spec(cin, 192, 1),
          "branch7x7_1": _spec(cin, c7, 1), "branch7x7_2": _spec(c7, c7, (1, 7), p=(0, 3)),
          "branch7x7_3": _spec(c7, 192, (7, 1), p=(3, 0)),
          "branch7x7dbl_1": _spec(cin, c7, 1), "branch7x7dbl_2": _spec(c7, c7, (7, 1), p=(3, 0)),
          "branch7x7dbl_3": _spec(c7, c7, (1, 7), p=(0, 3)),
          "branch7x7dbl_4": _spec(c7, c7, (7, 1), p=(3, 0)),
          "branch7x7dbl_5": _spec(c7, 192, (1, 7), p=(0, 3)),
          "branch_pool": _spec(cin, 192, 1)}


def _block_d(cin):
  return {"branch3x3_1": _spec(cin, 192, 1), "branch3x3_2": _spec(192, 320, 3, s=2),
          "branch7x7x3_1": _spec(cin, 192, 1), "branch7x7x3_2": _spec(192, 192, (1, 7), p=(0, 3)),
          "branch7x7x3_3": _spec(192, 192, (7, 1), p=(3, 0)),
          "branch7x7x3_4": _spec(192, 192, 3, s=2)}


def _block_e(cin):
  return {"branch1x1": _spec(cin, 320, 1),
          "branch3x3_1": _spec(cin, 384, 1), "branch3x3_2a": _spec(384, 384, (1, 3), p=(0, 1)),
          "branch3x3_2b": _spec(384, 384, (3, 1), p=(1, 0)),
          "branch3x3dbl_1": _spec(cin, 448, 1), "branch3x3dbl_2": _spec(448, 384, 3, p=1),
          "branch3x3dbl_3a": _spec(384, 384, (1, 3), p=(0, 1)),
          "branch3x3dbl_3b": _spec(384, 384, (3, 1), p=(1, 0)),
          "branch_pool": _spec(cin, 192, 1)}


@functools.lru_cache(maxsize=None)
def layer_specs() -> Mapping[str, Any]:
  """Ordered ``{top-level name: ConvSpec | {conv name: ConvSpec}}`` of the whole network (torch names)."""
  s = collections.OrderedDict()
  s["Conv2d_1a_3x3"] = _spec(3, 32, 3, s=2)
  s["Conv2d_2a_3x3"] = _spec(32, 32, 3)
  s["Conv2d_2b_3x3"] = _spec(32, 64, 3, p=1)
  s["Conv2d_3b_1x1"] = _spec(64, 80, 1)
  s["Conv2d_4a_3x3"] = _spec(80, 192, 3)
  s["Mixed_5b"] = _block_a(192, 32)
  s["Mixed_5c"] = _block_a(256, 64)
  s["Mixed_5d"] = _block_a(288, 64)
  s["Mixed_6a"] = _block_b(288)
  s["Mixed_6b"] = _block_c(768, 128)
  s["Mixed_6c"] = _block_c(768, 160)
  s["Mixed_6d"] = _block_c(768, 160)
  s["Mixed_6e"] = _block_c(768, 192)
  s["Mixed_7a"] = _block_d(768)
  s["Mixed_7b"] = _block_e(1280)
  s["Mixed_7c"] = _block_e(2048)
  return s


def _conv_paths():
  """Yields ``(path tuple in the Flax params, torch prefix, ConvSpec)`` for every conv layer."""
  for name, spec in layer_specs().items():
    if isinstance(spec, ConvSpec):
      yield (name,), name, spec
    else:
      for sub, sub_spec in spec.items():
        yield (name, sub), f"{name}.{sub}", sub_spec


def state_dict_shapes() -> dict[str, tuple[int, ...]]:
  """Every key of the pytorch-fid state_dict (less ``num_batches_tracked``) with its shape."""
  shapes = {}
  for _, prefix, sp in _conv_paths():
    shapes[f"{prefix}.conv.weight"] = (sp.cout, sp.cin) + sp.kernel
    for stat in ("weight", "bias", "running_mean", "running_var"):
      shapes[f"{prefix}.bn.{stat}"] = (sp.cout,)
  shapes["fc.weight"] = (NUM_CLASSES, FEATURE_DIM)
  shapes["fc.bias"] = (NUM_CLASSES,)
  return shapes


# ------------------------------------------------------------------------------------------ network


class _Block(nn.Module):
  """Base of the Inception blocks: ``self.conv(sub)`` applies sub-layer ``sub`` of ``layer_specs()``."""
  precision: Any = jax.lax.Precision.HIGHEST

  def conv(self, sub: str, x):
    return BasicConv(layer_specs()[self.name][sub], precision=self.precision, name=sub)(x)


class BasicConv(nn.Module):
  """torchvision ``BasicConv2d`` with its BatchNorm folded: ``relu(conv(x, kernel) + bias)``."""
  spec: ConvSpec
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    sp = self.spec
    kernel = self.param("kernel", nn.initializers.lecun_normal(), sp.kernel + (sp.cin, sp.cout))
    bias = self.param("bias", nn.initializers.zeros_init(), (sp.cout,))
    y = jax.lax.conv_general_dilated(
        x, kernel, window_strides=sp.stride, padding=[(p, p) for p in sp.padding],
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=self.precision)
    return nn.relu(y + bias)


def _avg_pool_3x3(x):
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_s2(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class FIDInceptionA(_Block):
  @nn.compact
  def __call__(self, x):
    b1 = self.conv("branch1x1", x)
    b5 = self.conv("branch5x5_2", self.conv("branch5x5_1", x))
    b3 = self.conv("branch3x3dbl_3", self.conv("branch3x3dbl_2", self.conv("branch3x3dbl_1", x)))
    bp = self.conv("branch_pool", _avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(_Block):
  @nn.compact
  def __call__(self, x):
    b3 = self.conv("branch3x3", x)
    bd = self.conv("branch3x3dbl_3", self.conv("branch3x3dbl_2", self.conv("branch3x3dbl_1", x)))
    return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class FIDInceptionC(_Block):
  @nn.compact
  def __call__(self, x):
    b1 = self.conv("branch1x1", x)
    b7 = x
    for i in (1, 2, 3):
      b7 = self.conv(f"branch7x7_{i}", b7)
    bd = x
    for i in (1, 2, 3, 4, 5):
      bd = self.conv(f"branch7x7dbl_{i}", bd)
    bp = self.conv("branch_pool", _avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(_Block):
  @nn.compact
  def __call__(self, x):
    b3 = self.conv("branch3x3_2", self.conv("branch3x3_1", x))
    b7 = x
    for i in (1, 2, 3, 4):
      b7 = self.conv(f"branch7x7x3_{i}", b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class FIDInceptionE(_Block):
  """``pool="avg"``: FIDInceptionE_1 (Mixed_7b); ``pool="max"``: FIDInceptionE_2 (Mixed_7c)."""
  pool: str = "avg"

  @nn.compact
  def __call__(self, x):
    b1 = self.conv("branch1x1", x)
    b3 = self.conv("branch3x3_1", x)
    b3 = jnp.concatenate([self.conv("branch3x3_2a", b3), self.conv("branch3x3_2b", b3)], axis=-1)
    bd = self.conv("branch3x3dbl_2", self.conv("branch3x3dbl_1", x))
    bd = jnp.concatenate([self.conv("branch3x3dbl_3a", bd), self.conv("branch3x3dbl_3b", bd)], axis=-1)
    if self.pool == "avg":
      bp = _avg_pool_3x3(x)
    else:
      bp = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    bp = self.conv("branch_pool", bp)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """FID Inception-v3. ``__call__(x)`` with ``x`` float (B, H, W, 3) in [-1, 1] (H, W >= 75, or any
  size when ``resize_input``) -> ``{"pool": (B, 2048), "logits": (B, 1008), "spatial": (B, S)}`` in
  float32.

  ``spatial`` are the sFID features (Nash et al. 2021, "Generating images with sparse
  representations", as computed by guided-diffusion's evaluator): the first 7 channels of the
  TF graph's ``mixed_6/conv`` (the ReLU output of ``Mixed_6d.branch1x1``, 17x17 at 299 px, i.e. the
  first 192 channels of ``Mixed_6d``'s output), flattened in (H, W, C) order: S = 17 * 17 * 7 = 2023.
  """
  resize_input: bool = True
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"expected (B, H, W, 3) input, got {x.shape}")
    if self.resize_input:
      x = resize(x)
    if min(x.shape[1:3]) < MIN_INPUT_SIZE:
      raise ValueError(f"input {x.shape[1:3]} is smaller than {MIN_INPUT_SIZE} px; use resize_input")
    p = self.precision
    stem = lambda name, h: BasicConv(layer_specs()[name], precision=p, name=name)(h)  # noqa: E731
    x = stem("Conv2d_2b_3x3", stem("Conv2d_2a_3x3", stem("Conv2d_1a_3x3", x)))
    x = _max_pool_3x3_s2(x)
    x = _max_pool_3x3_s2(stem("Conv2d_4a_3x3", stem("Conv2d_3b_1x1", x)))
    for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
      x = FIDInceptionA(precision=p, name=name)(x)
    x = InceptionB(precision=p, name="Mixed_6a")(x)
    for name in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
      x = FIDInceptionC(precision=p, name=name)(x)
      if name == "Mixed_6d":  # Channels [0, 192) of the concat are branch1x1's ReLU output.
        spatial = x[..., :SPATIAL_CHANNELS].reshape(x.shape[0], -1)
    x = InceptionD(precision=p, name="Mixed_7a")(x)
    x = FIDInceptionE(pool="avg", precision=p, name="Mixed_7b")(x)
    x = FIDInceptionE(pool="max", precision=p, name="Mixed_7c")(x)
    pool = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(NUM_CLASSES, precision=p, name="fc")(pool)
    return {"pool": pool, "logits": logits, "spatial": spatial}


def resize(x, size: int = INPUT_SIZE):
  """Bilinear resize of (B, H, W, C) to (B, size, size, C) as ``F.interpolate(align_corners=False)``:
  half-pixel centres, edge samples clamped, no antialiasing (also when downsampling).
  """
  if x.shape[1:3] == (size, size):
    return x
  return jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), "bilinear", antialias=False)


def preprocess(images, input_range: str = "uint8"):
  """Images -> float32 (B, H, W, 3) in [-1, 1].

  Args:
    images: (B, H, W, C) or (B, H, W) with C in {1, 3}; grayscale is repeated to 3 channels.
    input_range: ``"uint8"`` for values in [0, 255] (``x / 127.5 - 1``), ``"[-1,1]"`` for values
      already in [-1, 1], ``"[0,1]"`` for values in [0, 1] (``2 x - 1``).
  """
  x = jnp.asarray(images)
  if x.ndim == 3:
    x = x[..., None]
  x = x.astype(jnp.float32)
  if input_range == "uint8":
    x = x / 127.5 - 1.0
  elif input_range == "[0,1]":
    x = 2.0 * x - 1.0
  elif input_range != "[-1,1]":
    raise ValueError(f"unknown input_range {input_range!r}")
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  elif x.shape[-1] != 3:
    raise ValueError(f"expected 1 or 3 channels, got {x.shape[-1]}")
  return x


# ------------------------------------------------------------------------------------------ weights


def check_state_dict(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Validates a pytorch-fid state_dict; returns it as numpy arrays without ``num_batches_tracked``.

  Raises:
    KeyError: a key is missing or unexpected (the first few of each are listed).
    ValueError: a key has the wrong shape.
  """
  sd = {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v)
        for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
  expected = state_dict_shapes()
  missing = sorted(set(expected) - set(sd))
  unexpected = sorted(set(sd) - set(expected))
  if missing or unexpected:
    raise KeyError(f"Inception state_dict mismatch: missing {len(missing)} keys {missing[:8]}"
                   f"{'...' if len(missing) > 8 else ''}; unexpected {len(unexpected)} keys "
                   f"{unexpected[:8]}{'...' if len(unexpected) > 8 else ''}")
  bad = [f"{k}: got {sd[k].shape}, expected {s}" for k, s in expected.items() if sd[k].shape != s]
  if bad:
    raise ValueError("Inception state_dict shape mismatch: " + "; ".join(bad[:8]))
  return sd


def convert_state_dict(state_dict: Mapping[str, Any]) -> dict:
  """pytorch-fid state_dict (numpy or torch arrays) -> Flax ``params`` (float32, BN folded).

  Raises:
    KeyError, ValueError: see :func:`check_state_dict`.
  """
  sd = check_state_dict(state_dict)
  params: dict = {}
  for path, prefix, _ in _conv_paths():
    w = sd[f"{prefix}.conv.weight"].astype(np.float64)
    gamma, beta, mean, var = (sd[f"{prefix}.bn.{s}"].astype(np.float64)
                              for s in ("weight", "bias", "running_mean", "running_var"))
    g = gamma / np.sqrt(var + BN_EPS)
    node = params
    for p in path:
      node = node.setdefault(p, {})
    node["kernel"] = (np.transpose(w, (2, 3, 1, 0)) * g).astype(np.float32)
    node["bias"] = (beta - mean * g).astype(np.float32)
  params["fc"] = {"kernel": sd["fc.weight"].T.astype(np.float32),
                  "bias": sd["fc.bias"].astype(np.float32)}
  return params


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads the weights file: an .npz of the state_dict, or the original .pth (needs torch)."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"Inception weights {path!r} not found; download {FID_WEIGHTS_URL} "
                            "(see cdm/evaluation/inception.py)")
  if path.endswith(".npz"):
    with np.load(path) as f:
      return {k: f[k] for k in f.files}
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f"reading {path!r} needs torch; or convert it elsewhere with "
                      "`python -m cdm.evaluation.inception --convert=X.pth --out=X.npz`") from e
  sd = torch.load(path, map_location="cpu", weights_only=True)
  return {k: v.detach().cpu().numpy() for k, v in sd.items()}


def load_params(path: str) -> dict:
  """Flax params of :class:`InceptionV3` from a local .npz (state_dict) or .pth file."""
  return convert_state_dict(read_state_dict(path))


def random_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
  """A random state_dict with the exact keys and shapes (tests; never for real metrics)."""
  rng = np.random.default_rng(seed)
  sd = {}
  for k, s in state_dict_shapes().items():
    if k.endswith("conv.weight"):
      fan_in = s[1] * s[2] * s[3]
      sd[k] = rng.normal(0, np.sqrt(2.0 / fan_in), s).astype(np.float32)
    elif k.endswith("running_var"):
      sd[k] = rng.uniform(0.5, 1.5, s).astype(np.float32)
    elif k.endswith("bn.weight"):
      sd[k] = rng.uniform(0.5, 1.5, s).astype(np.float32)
    else:
      sd[k] = (0.1 * rng.normal(size=s)).astype(np.float32)
  return sd


# ------------------------------------------------------------------------------------------ feature fn


def make_feature_fn(params, *, input_range: str = "uint8", resize_input: bool = True,
                    precision=jax.lax.Precision.HIGHEST, spatial: bool = False) -> Callable:
  """Jitted ``fn(images) -> {"features": (B, 2048), "logits": (B, 1008)[, "spatial_features":
  (B, 2023)]}`` (float32); ``spatial=True`` adds the sFID features (see :class:`InceptionV3`).

  ``images``: (B, H, W, C) with C in {1, 3} in ``input_range`` (see :func:`preprocess`).
  """
  model = InceptionV3(resize_input=resize_input, precision=precision)
  params = jax.tree_util.tree_map(jnp.asarray, params)

  @jax.jit
  def apply(params, images):  # params are an argument, not ~100 MB of constants in the program.
    out = model.apply({"params": params}, preprocess(images, input_range))
    feats = {"features": out["pool"], "logits": out["logits"]}
    if spatial:
      feats["spatial_features"] = out["spatial"]
    return feats

  return functools.partial(apply, params)


def main(argv=None) -> None:
  """CLI: ``python -m cdm.evaluation.inception --convert=X.pth --out=X.npz`` (needs torch)."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--convert", required=True, help="pytorch-fid .pth (or .npz) weights file")
  parser.add_argument("--out", required=True, help="output .npz of the state_dict")
  args = parser.parse_args(argv)
  sd = check_state_dict(read_state_dict(args.convert))
  np.savez(args.out, **sd)
  print(f"wrote {len(sd)} arrays to {args.out}")


if __name__ == "__main__":
  main()
