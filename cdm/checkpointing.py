"""Orbax checkpoints of a training run: state, input-pipeline position and the architecture.

Layout: ``workdir/checkpoints/<step>/{state, data, meta}``. Orbax writes each step into a temporary
directory and renames it when complete, so a crash mid-save leaves the previous checkpoint as the
latest one and the partial one is never picked up. ``meta`` holds the fields that fix the parameter
shapes; restoring into a different architecture is refused with the list of mismatching fields.
"""

from __future__ import annotations

import os

import orbax.checkpoint as ocp

from cdm import fileio

# Config fields that determine the shapes (or meaning) of the parameters.
ARCHITECTURE_FIELDS = {
    "kind": None,
    "data": ("image_size", "low_res_size", "channels", "num_classes"),
    "model": ("model_channels", "channel_mult", "num_res_blocks", "attention_resolutions",
              "num_heads", "num_head_channels", "num_heads_upsample", "use_scale_shift_norm",
              "resblock_updown", "use_new_attention_order", "learn_sigma", "aug_level_embedding",
              "class_conditional"),
    "diffusion": ("model_mean_type", "model_var_type", "noise_conditioning"),
    "train": ("class_dropout_prob",),
}


def _jsonable(v):
  if isinstance(v, (tuple, list)):
    return [_jsonable(x) for x in v]
  return v


def architecture(config) -> dict:
  """The flat dict of architecture fields of a stage config, e.g. {"model.model_channels": 32}."""
  out = {}
  for section, fields in ARCHITECTURE_FIELDS.items():
    if fields is None:
      out[section] = _jsonable(config[section])
      continue
    for f in fields:
      value = config[section][f]
      if section == "train" and f == "class_dropout_prob":  # only "has a null class" matters
        f, value = "has_null_class", bool(value)
      out[f"{section}.{f}"] = _jsonable(value)
  return out


def check_compatible(saved: dict, config, where: str) -> None:
  """Raises ValueError naming every architecture field where ``saved`` and ``config`` differ."""
  current = architecture(config)
  diffs = [f"{k}: checkpoint has {saved.get(k)!r}, config has {current[k]!r}"
           for k in current if k in saved and saved[k] != current[k]]
  if diffs:
    raise ValueError(
        f"The checkpoint in {where} was trained with a different architecture; change these "
        "config fields to match it (or use a fresh --workdir):\n  " + "\n  ".join(diffs))


class Checkpointer:
  """A thin wrapper of ``ocp.CheckpointManager`` for training runs."""

  def __init__(self, workdir: str, train_config, *, async_save: bool = True):
    self.directory = fileio.join(fileio.resolve(workdir), "checkpoints")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=train_config.max_to_keep,
        keep_period=train_config.keep_every or None,
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True,
        create=True,
    )
    self.manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=("state", "data", "meta"))

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step: int, state, data_state: dict, config, *, force: bool = False) -> bool:
    meta = {"step": int(step), "architecture": architecture(config)}
    return self.manager.save(
        int(step),
        args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                data=ocp.args.JsonSave(data_state),
                                meta=ocp.args.JsonSave(meta)),
        force=force)

  def restore(self, abstract_state, config, step=None):
    """Restores (state, data_state) at ``step`` (default latest) into ``abstract_state``'s shardings."""
    step = self.manager.latest_step() if step is None else step
    meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    check_compatible(meta["architecture"], config, self.directory)
    restored = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                      data=ocp.args.JsonRestore()))
    return restored["state"], restored["data"]

  def reached_preemption(self, step: int) -> bool:
    return self.manager.reached_preemption(step)

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def load_params(path: str, config=None, *, use_ema: bool = True, step=None):
  """Loads sampling params from a training workdir (or its checkpoints dir) without the optimizer.

  Returns the EMA params by default. Checks the architecture against ``config`` when given.
  """
  path = fileio.resolve(path)
  ckpt_dir = path if os.path.basename(path.rstrip("/")) == "checkpoints" else fileio.join(
      path, "checkpoints")
  if not fileio.exists(ckpt_dir):
    raise FileNotFoundError(
        f"no checkpoints under {path}: train the stage first (python -m cdm.main --config=... "
        f"--workdir={path}) or point the cascade config at its workdir.")
  manager = ocp.CheckpointManager(ckpt_dir, item_names=("state", "data", "meta"),
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"{ckpt_dir} holds no complete checkpoint.")
  meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  if config is not None:
    check_compatible(meta["architecture"], config, ckpt_dir)
  state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  manager.close()
  key = "ema_params" if use_ema else "params"
  return state[key], int(step)


save_json = fileio.save_json
