"""Load OpenAI guided-diffusion (ADM) checkpoints into cdm's UNet.

Library:
  * :func:`model_config_from_guided_diffusion` -- a cdm stage config from guided-diffusion's
    ``create_model`` / ``sr_create_model`` arguments (or ``create_classifier``'s ``classifier_*``
    arguments: the noisy classifier, ``EncoderUNetModel``, of :mod:`cdm.models.noisy_classifier`).
  * :func:`check_state_dict` -- validates key set and shapes (no arrays needed).
  * :func:`convert_guided_diffusion` -- torch-layout ``state_dict`` (numpy) -> cdm params.
  * :func:`save_converted` / :func:`load_converted` / :func:`load_converted_config` -- an orbax
    checkpoint ``DIR/params`` holding ``{"params": params}`` plus ``DIR/config.json``.

CLI::

  python -m cdm.models.convert --checkpoint=256x256_diffusion.pt --config=configs/....py --out=DIR
  python -m cdm.models.convert --checkpoint=X.npz --gd_args='{"image_size": 64, ...}' --out=DIR

Layout rules (``shared/specs/ADM.md``): conv ``OIHW -> HWIO``; ``Linear`` ``(out, in) -> (in, out)``;
``Conv1d`` (qkv, proj_out) ``(out, in, 1) -> (in, out)``; Embedding and GroupNorm unchanged.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
from typing import Any, Mapping, Optional

import jax
import numpy as np

from cdm.models import noisy_classifier as classifier_lib
from cdm.models import unet as unet_lib

FORMAT = "cdm.models.convert/1"
GD_NUM_CLASSES = 1000  # guided-diffusion's NUM_CLASSES.

# cdm submodule name -> guided-diffusion sub-key (see cdm/models/layers.py).
_SUBMODULES = {
    "in_norm": "in_layers.0", "in_conv": "in_layers.2", "emb_proj": "emb_layers.1",
    "out_norm": "out_layers.0", "out_conv": "out_layers.3", "skip_connection": "skip_connection",
    "norm": "norm", "qkv": "qkv", "proj_out": "proj_out", "op": "op", "conv": "conv",
    "qkv_proj": "qkv_proj", "c_proj": "c_proj",  # the classifier's AttentionPool2d
}
_LEAVES = {"kernel": "weight", "bias": "bias", "scale": "weight", "embedding": "weight",
           "positional_embedding": "positional_embedding"}
_CONV1D = ("qkv", "proj_out", "qkv_proj", "c_proj")  # Dense in cdm, Conv1d(kernel 1) in torch.


def _is_classifier(model_or_config) -> bool:
  """True for a NoisyClassifier or a ``kind = "classifier"`` stage config."""
  if isinstance(model_or_config, (classifier_lib.NoisyClassifier, unet_lib.UNet)):
    return isinstance(model_or_config, classifier_lib.NoisyClassifier)
  return model_or_config.get("kind", "diffusion") == "classifier"


def _abstract_params(model_or_config):
  lib = classifier_lib if _is_classifier(model_or_config) else unet_lib
  return lib.abstract_params(model_or_config)


# ---------------------------------------------------------------------- config mapping
def _parse_mult(text: str) -> tuple:
  vals = [float(v) for v in str(text).split(",") if v.strip()]
  return tuple(int(v) if v.is_integer() else v for v in vals)


def default_channel_mult(image_size: int, super_res: bool = False) -> tuple:
  """guided-diffusion's channel_mult for ``channel_mult=""`` (per output size)."""
  table = {512: (1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 64: (1, 2, 3, 4)} if super_res else {
      512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4),
      64: (1, 2, 3, 4)}
  if image_size not in table:
    raise ValueError(f"guided-diffusion has no default channel_mult for image size {image_size}; "
                     "pass channel_mult explicitly")
  return table[image_size]


def model_config_from_guided_diffusion(args: Mapping[str, Any], base_config=None,
                                       num_classes: Optional[int] = None):
  """A cdm stage config reproducing a guided-diffusion model.

  Args:
    args: keyword arguments of ``create_model`` (``image_size``, ``num_channels``, ...) or of
      ``sr_create_model`` (``large_size``, ``small_size``, ...), e.g. the ``args`` entries of
      ``adm_specs.json`` or the flags of guided-diffusion's scripts.
    base_config: stage config to modify (default ``cdm.config_base.stage_config()``).
    num_classes: label count of a class-conditional model; default ``args["num_classes"]`` if
      present, else guided-diffusion's 1000.

  Returns:
    The stage ``ConfigDict`` with ``model.*`` and ``data.image_size/low_res_size/channels/
    num_classes`` set (``train.class_dropout_prob = 0``: ADM has no null class). Diffusion settings
    are left alone: guided-diffusion keeps them outside the model arguments.
  """
  from cdm import config_base  # pylint: disable=import-outside-toplevel
  if any(k.startswith("classifier_") for k in args):  # create_classifier's arguments
    return classifier_lib.config_from_guided_diffusion(args, base_config, num_classes)
  c = base_config if base_config is not None else config_base.stage_config()
  a = dict(args)
  super_res = "large_size" in a
  image_size = int(a["large_size"] if super_res else a["image_size"])
  mult = a.get("channel_mult", "")
  mult = _parse_mult(mult) if mult not in ("", None) else default_channel_mult(image_size,
                                                                                super_res)
  res = a.get("attention_resolutions", "16,8")
  res = tuple(int(r) for r in str(res).split(",") if r.strip()) if isinstance(res, str) else \
      tuple(int(r) for r in res)

  m = c.model
  m.model_channels = int(a["num_channels"])
  m.channel_mult = mult
  m.num_res_blocks = int(a["num_res_blocks"])
  m.attention_resolutions = res
  m.num_heads = int(a.get("num_heads", 4))
  m.num_head_channels = int(a.get("num_head_channels", -1))
  m.num_heads_upsample = int(a.get("num_heads_upsample", -1))
  m.dropout = float(a.get("dropout", 0.0))
  m.use_scale_shift_norm = bool(a.get("use_scale_shift_norm", True))
  m.resblock_updown = bool(a.get("resblock_updown", False))
  # sr_create_model cannot set it: every SuperResModel uses the legacy order.
  m.use_new_attention_order = False if super_res else bool(a.get("use_new_attention_order", False))
  m.learn_sigma = bool(a.get("learn_sigma", False))
  m.low_res_upsample = "bilinear"
  m.aug_level_embedding = False
  m.class_conditional = bool(a.get("class_cond", False))
  m.dtype = "float32"
  c.data.image_size = image_size
  c.data.low_res_size = int(a["small_size"]) if super_res else 0
  c.data.channels = int(a.get("in_channels", 3))
  c.data.num_classes = int(num_classes or a.get("num_classes") or GD_NUM_CLASSES)
  c.train.class_dropout_prob = 0.0
  return c


# ---------------------------------------------------------------------- key plan
def _torch_prefix(top: str) -> str:
  m = re.fullmatch(r"(input_blocks|output_blocks)_(\d+)_(\d+)", top)
  if m:
    return f"{m.group(1)}.{m.group(2)}.{m.group(3)}"
  m = re.fullmatch(r"(middle_block|time_embed|out|aug_embed)_(\d+)", top)
  if m:
    return f"{m.group(1)}.{m.group(2)}"
  return top  # label_emb


def _torch_key(path: tuple[str, ...]) -> str:
  parts = [_torch_prefix(path[0])] + [_SUBMODULES[p] for p in path[1:-1]] + [_LEAVES[path[-1]]]
  return ".".join(parts)


def _torch_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
  if path[-1] == "positional_embedding":  # (tokens, C) -> (C, tokens)
    return (shape[1], shape[0])
  if path[-1] != "kernel":
    return tuple(shape)
  if len(shape) == 4:  # HWIO -> OIHW
    return (shape[3], shape[2], shape[0], shape[1])
  if path[-2] in _CONV1D:  # (in, out) -> (out, in, 1)
    return (shape[1], shape[0], 1)
  return (shape[1], shape[0])


def conversion_plan(model_or_config) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
  """Maps each guided-diffusion key the model needs to (cdm param path, expected torch shape).

  Args:
    model_or_config: a stage config or a ``UNet`` (or a noisy classifier / its config).

  Returns:
    ``{torch_key: (flax_path, torch_shape)}`` in the model's parameter order. Built with
    ``jax.eval_shape``: nothing is allocated.
  """
  abstract = _abstract_params(model_or_config)
  plan = {}
  for kp, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]:
    path = tuple(k.key for k in kp)
    plan[_torch_key(path)] = (path, _torch_shape(path, tuple(leaf.shape)))
  return plan


def _hints(missing, unexpected, mismatched) -> list[str]:
  """Config fields that likely explain a key/shape mismatch."""
  keys = set(missing) | set(unexpected) | {k for k, _, _ in mismatched}
  hints = []
  has = lambda pat: any(re.search(pat, k) for k in keys)
  if any(k.startswith("label_emb") for k in missing):
    hints.append("the checkpoint is unconditional: set model.class_conditional = False")
  if any(k.startswith("label_emb") for k in unexpected):
    hints.append("the checkpoint is class-conditional: set model.class_conditional = True")
  if any(k.startswith("label_emb") for k, _, _ in mismatched):
    hints.append("label_emb rows differ: set data.num_classes (and train.class_dropout_prob = 0: "
                 "guided-diffusion has no null class)")
  if any(k.startswith("aug_embed") for k in missing):
    hints.append("guided-diffusion has no augmentation-level embedding: set "
                 "model.aug_level_embedding = False")
  if any(k.startswith("input_blocks.0.0") for k, _, _ in mismatched):
    hints.append("stem input channels differ: data.channels, or data.low_res_size (an SR model "
                 "takes 2 * channels)")
  if any(k.startswith("out.2") for k, _, _ in mismatched):
    hints.append("output channels differ: model.learn_sigma / data.channels")
  if any(".emb_layers." in k for k, _, _ in mismatched):
    hints.append("model.use_scale_shift_norm (or model.model_channels / model.channel_mult)")
  if has(r"\.(norm|qkv|proj_out)\."):
    hints.append("attention blocks differ: model.attention_resolutions (pixels), data.image_size")
  if has(r"\.(op|conv)\.|\.(in|out)_layers\."):
    hints.append("model.resblock_updown, model.num_res_blocks, model.channel_mult")
  if any(not re.match(r"label_emb|input_blocks\.0\.0|out\.2", k) for k, _, _ in mismatched):
    hints.append("widths: model.model_channels, model.channel_mult")
  hints.append("build the config with model_config_from_guided_diffusion(args) from the "
               "checkpoint's create_model / sr_create_model arguments")
  return list(dict.fromkeys(hints))


def _fmt(items, limit=12) -> str:
  items = list(items)
  more = f" ... (+{len(items) - limit} more)" if len(items) > limit else ""
  return ", ".join(str(i) for i in items[:limit]) + more


def check_state_dict(shapes: Mapping[str, tuple], model_or_config) -> dict:
  """Validates a guided-diffusion ``state_dict`` key set and shapes against the cdm model.

  Args:
    shapes: ``{key: shape}`` (or ``{key: array}``) of the checkpoint, torch layout.
    model_or_config: a stage config or a ``UNet``.

  Returns:
    The conversion plan (see :func:`conversion_plan`).

  Raises:
    ValueError: listing the missing keys, unexpected keys and shape mismatches, and the config
      fields that probably need to change.
  """
  plan = conversion_plan(model_or_config)
  shapes = {k: tuple(np.shape(v)) if not isinstance(v, (tuple, list)) else tuple(v)
            for k, v in shapes.items()}
  missing = [k for k in plan if k not in shapes]
  unexpected = [k for k in shapes if k not in plan]
  mismatched = [(k, shapes[k], plan[k][1]) for k in plan
                if k in shapes and shapes[k] != plan[k][1]]
  if missing or unexpected or mismatched:
    lines = ["guided-diffusion state_dict does not match the cdm model config:"]
    if missing:
      lines.append(f"  missing keys ({len(missing)}): {_fmt(missing)}")
    if unexpected:
      lines.append(f"  unexpected keys ({len(unexpected)}): {_fmt(unexpected)}")
    if mismatched:
      lines.append(f"  shape mismatches ({len(mismatched)}): " + _fmt(
          f"{k} checkpoint {s} vs model {e}" for k, s, e in mismatched))
    lines.append("  config fields to check: " + "; ".join(_hints(missing, unexpected,
                                                                   mismatched)))
    raise ValueError("\n".join(lines))
  return plan


# ---------------------------------------------------------------------- conversion
def _qkv_permutation(heads: int, channels: int, to_new: bool) -> np.ndarray:
  """Row order turning a qkv weight of one head layout into the other."""
  d = channels // heads
  idx = np.arange(3 * channels)
  if to_new:  # legacy rows (heads, 3, d) -> new (3, heads, d)
    return idx.reshape(heads, 3, d).transpose(1, 0, 2).reshape(-1)
  return idx.reshape(3, heads, d).transpose(1, 0, 2).reshape(-1)


def _to_flax(path, value: np.ndarray) -> np.ndarray:
  if path[-1] == "positional_embedding":
    return value.T
  if path[-1] != "kernel":
    return value
  if value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  if value.ndim == 3:
    return value[:, :, 0].T
  return value.T


def convert_guided_diffusion(state_dict: Mapping[str, Any], model_config,
                             source_new_attention_order: Optional[bool] = None) -> dict:
  """Converts a guided-diffusion ``UNetModel`` / ``SuperResModel`` state_dict to cdm params.

  Args:
    state_dict: ``{key: array}`` in torch layout (numpy arrays, or anything ``np.asarray`` takes);
      every key must be consumed and every shape must match.
    model_config: the cdm stage config (see :func:`model_config_from_guided_diffusion`) or a
      ``UNet``.
    source_new_attention_order: the checkpoint's qkv layout; None = the model's
      ``use_new_attention_order``. When it differs from the model's, qkv rows are permuted, so a
      legacy checkpoint can run in a model built with the new order and vice versa.

  Returns:
    A nested dict of float32 numpy arrays, usable as ``{"params": params}`` in ``UNet.apply``.

  Raises:
    ValueError: key set or shapes do not match (see :func:`check_state_dict`).
  """
  if isinstance(model_config, (unet_lib.UNet, classifier_lib.NoisyClassifier)):
    model = model_config
  elif _is_classifier(model_config):
    model = classifier_lib.create_classifier(model_config)
  else:
    model = unet_lib.create_model(model_config)
  plan = check_state_dict(state_dict, model)
  permute = (source_new_attention_order is not None and
             bool(source_new_attention_order) != model.use_new_attention_order)
  params: dict = {}
  for key, (path, _) in plan.items():
    value = np.asarray(state_dict[key], dtype=np.float32)
    if permute and path[-2] == "qkv":
      channels = value.shape[0] // 3
      heads = _attention_heads(model, channels, decoder=path[0].startswith("output_blocks"))
      value = value[_qkv_permutation(heads, channels, to_new=model.use_new_attention_order)]
    node = params
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = np.ascontiguousarray(_to_flax(path, value))
  return params


def _attention_heads(model: unet_lib.UNet, channels: int, decoder: bool) -> int:
  """Heads of an attention block of ``channels`` channels in ``model``."""
  if model.num_head_channels != -1:
    return channels // model.num_head_channels
  upsample = getattr(model, "num_heads_upsample", -1)  # a classifier has no decoder
  return upsample if decoder and upsample != -1 else model.num_heads


# ---------------------------------------------------------------------- files
def load_state_dict(path: str | os.PathLike, prefix: str = "") -> dict[str, np.ndarray]:
  """Reads a guided-diffusion state_dict from ``.pt`` (needs torch) or ``.npz``.

  Args:
    path: checkpoint file.
    prefix: only keys starting with it are kept, with the prefix removed (e.g.
      ``"tiny_cond/param/"``).

  Returns:
    ``{key: float32 numpy array}`` in torch layout.
  """
  path = str(path)
  if path.endswith(".npz"):
    with np.load(path) as z:
      raw = {k: z[k] for k in z.files}
  else:
    try:
      import torch  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise ImportError("reading a .pt checkpoint needs torch (pip install torch); or save the "
                        "state_dict as .npz") from e
    raw = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(raw, Mapping) and "state_dict" in raw and isinstance(raw["state_dict"], Mapping):
      raw = raw["state_dict"]
    raw = {k: v.detach().float().numpy() for k, v in raw.items() if hasattr(v, "detach")}
  return {k[len(prefix):]: np.asarray(v, np.float32) for k, v in raw.items()
          if k.startswith(prefix)}


def _json_default(o):
  if isinstance(o, (np.dtype, type)):
    return np.dtype(o).name
  if isinstance(o, np.generic):
    return o.item()
  return str(o)


def save_converted(out_dir: str | os.PathLike, params, config, source: str = "",
                   overwrite: bool = False) -> pathlib.Path:
  """Writes ``{"params": params}`` as an orbax checkpoint ``out_dir/params`` and ``config.json``."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  out = pathlib.Path(out_dir).absolute()
  out.mkdir(parents=True, exist_ok=True)
  kwargs = (classifier_lib.classifier_kwargs(config) if _is_classifier(config)
            else unet_lib.model_kwargs(config))
  meta = {
      "format": FORMAT,
      "source": str(source),
      "param_count": int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params))),
      "model_kwargs": kwargs,
      "config": json.loads(config.to_json_best_effort()),
  }
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(out / "params", {"params": params}, force=overwrite)
  ckptr.wait_until_finished()
  ckptr.close()
  (out / "config.json").write_text(json.dumps(meta, indent=2, default=_json_default))
  return out


def load_converted_config(out_dir: str | os.PathLike):
  """The stage config (``ConfigDict``) stored beside a converted checkpoint."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  meta = json.loads((pathlib.Path(out_dir) / "config.json").read_text())
  return ml_collections.ConfigDict(meta["config"])


def load_converted(out_dir: str | os.PathLike):
  """Loads params written by :func:`save_converted` (host numpy arrays; shard/put as needed)."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  out = pathlib.Path(out_dir).absolute()
  target = None
  if (out / "config.json").exists():
    abstract = _abstract_params(load_converted_config(out))
    target = {"params": jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), abstract)}
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(out / "params", target)["params"]


# ---------------------------------------------------------------------- CLI
def _gd_args(text: str) -> dict:
  p = pathlib.Path(text)
  return json.loads(p.read_text() if p.is_file() else text)


def run(checkpoint: str, out: str, config=None, gd_args: Optional[Mapping[str, Any]] = None,
        prefix: str = "", source_attention_order: str = "auto",
        overwrite: bool = False) -> pathlib.Path:
  """What the CLI does: read ``checkpoint``, convert it for ``config``, write ``out``.

  Args:
    checkpoint: ``.pt`` or ``.npz`` state_dict.
    out: output directory (``out/params`` orbax checkpoint + ``out/config.json``).
    config: cdm stage config; or None with ``gd_args`` given.
    gd_args: guided-diffusion ``create_model`` / ``sr_create_model`` arguments.
    prefix: keep only keys with this prefix (stripped).
    source_attention_order: ``"auto"`` (the config's), ``"new"`` or ``"legacy"``.
    overwrite: replace an existing checkpoint.

  Returns:
    The output directory.
  """
  if (config is None) == (gd_args is None):
    raise ValueError("pass exactly one of --config (a cdm stage config) or --gd_args "
                     "(guided-diffusion model arguments as JSON)")
  if config is None:
    config = model_config_from_guided_diffusion(gd_args)
  order = {"auto": None, "new": True, "legacy": False}[source_attention_order]
  state_dict = load_state_dict(checkpoint, prefix=prefix)
  params = convert_guided_diffusion(state_dict, config, source_new_attention_order=order)
  path = save_converted(out, params, config, source=checkpoint, overwrite=overwrite)
  n = sum(np.size(x) for x in jax.tree_util.tree_leaves(params))
  print(f"converted {len(state_dict)} tensors ({n:,} parameters) -> {path}")
  return path


def main(argv) -> None:
  """CLI entry point (absl)."""
  del argv
  from absl import flags  # pylint: disable=import-outside-toplevel
  f = flags.FLAGS
  run(f.checkpoint, f.out, config=f.config, gd_args=_gd_args(f.gd_args) if f.gd_args else None,
      prefix=f.prefix, source_attention_order=f.source_attention_order, overwrite=f.overwrite)


def _define_flags() -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  flags.DEFINE_string("checkpoint", None, "guided-diffusion state_dict (.pt or .npz).",
                      required=True)
  config_flags.DEFINE_config_file("config", None, "cdm stage config file.", lock_config=True)
  flags.DEFINE_string("gd_args", "", "Instead of --config: guided-diffusion create_model / "
                      "sr_create_model arguments (JSON string or file).")
  flags.DEFINE_string("out", None, "Output directory.", required=True)
  flags.DEFINE_string("prefix", "", "Only .npz keys with this prefix (stripped).")
  flags.DEFINE_enum("source_attention_order", "auto", ["auto", "new", "legacy"],
                    "qkv layout of the checkpoint; auto = the config's use_new_attention_order.")
  flags.DEFINE_bool("overwrite", False, "Replace an existing checkpoint in --out.")


if __name__ == "__main__":
  from absl import app  # pylint: disable=import-outside-toplevel
  _define_flags()
  app.run(main)
