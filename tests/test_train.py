"""The training loop: runs on 8 devices, agrees with 1 device, resumes exactly, guards non-finite steps."""

import functools
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdm import cascade_config, checkpointing, sharding, train
from cdm import data as data_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(path, tmp_path, **overrides):
  c = cascade_config.load_stage_config(path, "tiny")
  c.unlock()
  c.data.data_dir = str(tmp_path / "tfds")
  for k, v in overrides.items():
    node = c
    *parents, leaf = k.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = v
  c.lock()
  return c


def leaves_close(a, b, atol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0)


def test_tiny_sr_stage_trains_checkpoints_and_samples(tmp_path):
  c = tiny("configs/mnist/sr16_32.py", tmp_path, **{
      "train.num_steps": 2, "train.sample_every": 2, "train.num_samples": 4})
  workdir = tmp_path / "sr"
  state = train.train_and_evaluate(c, str(workdir))
  assert int(state.step) == 2
  assert checkpointing.Checkpointer(str(workdir), c.train).latest_step() == 2
  assert (workdir / "samples" / "step_00000002.png").exists()


def _two_steps(config, devices, batch):
  """Two steps of the production jitted step on a mesh over ``devices``, from the same init."""
  mesh = sharding.make_mesh(config.mesh, devices=devices)
  *_, state, step = train.fresh_setup(config, mesh)
  batch = sharding.host_batch_to_global(batch, sharding.batch_sharding(mesh))
  for _ in range(2):
    state, metrics = step(state, batch)
  return state, metrics


def test_eight_devices_agree_with_one(tmp_path):
  c = tiny("configs/mnist/base16.py", tmp_path)
  batch = next(data_lib.create_train_iterator(c, process_index=0, process_count=1))
  s8, m8 = _two_steps(c, jax.devices(), batch)
  s1, m1 = _two_steps(c, jax.devices()[:1], batch)
  assert len(jax.tree.leaves(s8.params)[0].sharding.device_set) == 8
  np.testing.assert_allclose(float(m8["loss"]), float(m1["loss"]), rtol=1e-5)
  leaves_close(s8.params, s1.params, atol=2e-5)


def test_loss_goes_down_on_real_mnist(tmp_path):
  """40 steps on real digits: the eps-MSE falls well below its zero-init value of E[eps^2] = 1."""
  c = tiny("configs/mnist/base16.py", tmp_path,
           **{"train.learning_rate": 1e-3, "train.warmup_steps": 0})
  mesh = sharding.make_mesh(c.mesh)
  *_, state, step = train.fresh_setup(c, mesh, jax.random.PRNGKey(0))
  batches = data_lib.create_train_iterator(c, process_index=0, process_count=1)
  mse = []
  for _ in range(40):
    batch = sharding.host_batch_to_global(next(batches), sharding.batch_sharding(mesh))
    state, metrics = step(state, batch)
    mse.append(metrics["mse"])
  mse = np.asarray(jax.device_get(mse))
  first, last = mse[:5].mean(), mse[-10:].mean()
  assert 0.8 < first < 1.2, mse  # the output layer starts at zero: eps_hat = 0
  assert last < 0.5 * first, mse


def test_resume_is_exact(tmp_path):
  """2 steps, stop, 2 more == 4 steps straight (params, EMA, optimizer, data position)."""
  # log_every > 1 also exercises the progress hook between log points.
  c4 = tiny("configs/mnist/base16.py", tmp_path, **{"train.num_steps": 4, "train.log_every": 3})
  c2 = tiny("configs/mnist/base16.py", tmp_path, **{"train.num_steps": 2, "train.log_every": 3})
  straight = train.train_and_evaluate(c4, str(tmp_path / "a"))
  workdir = tmp_path / "a"
  assert (workdir / "config.json").exists()
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
  train.train_and_evaluate(c2, str(tmp_path / "b"))
  resumed = train.train_and_evaluate(c4, str(tmp_path / "b"))
  assert int(resumed.step) == 4
  leaves_close(straight.params, resumed.params, atol=0)
  leaves_close(straight.ema_params, resumed.ema_params, atol=0)
  leaves_close(straight.opt_state, resumed.opt_state, atol=0)


def _poisoned_init(original):
  """init_state with one NaN parameter: every loss and gradient becomes non-finite."""
  def init(*args, **kwargs):
    state = original(*args, **kwargs)
    leaves, treedef = jax.tree.flatten(state.params)
    leaves[0] = leaves[0].at[(0,) * leaves[0].ndim].set(jnp.nan)
    return state.replace(params=jax.tree.unflatten(treedef, leaves))
  return init


def test_nonfinite_steps_are_skipped_then_training_stops(tmp_path, monkeypatch):
  c = tiny("configs/mnist/base16.py", tmp_path, **{"train.num_steps": 6,
                                                   "train.max_consecutive_nonfinite": 3,
                                                   "train.log_every": 3})
  model, diffusion, tx = train.build(c)
  bad = jax.jit(functools.partial(_poisoned_init(train.init_state), c, model, tx))(
      jax.random.PRNGKey(0))
  batch = next(data_lib.create_train_iterator(c, process_index=0, process_count=1))
  step = jax.jit(functools.partial(train.train_step, config=c, model=model,
                                   diffusion=diffusion, tx=tx))
  new, metrics = step(bad, batch)
  assert float(metrics["skipped"]) == 1.0 and int(new.nonfinite_run) == 1
  assert int(new.step) == 1
  for a, b in zip(jax.tree.leaves((bad.params, bad.ema_params, bad.opt_state)),
                  jax.tree.leaves((new.params, new.ema_params, new.opt_state))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The loop stops with a clear message after max_consecutive_nonfinite skipped steps.
  monkeypatch.setattr(train, "init_state", _poisoned_init(train.init_state))
  with pytest.raises(FloatingPointError, match="3 consecutive"):
    train.train_and_evaluate(c, str(tmp_path / "nan"))


def test_checkpoint_from_other_architecture_is_refused(tmp_path):
  c = tiny("configs/mnist/base16.py", tmp_path)
  train.train_and_evaluate(c, str(tmp_path / "w"))
  other = tiny("configs/mnist/base16.py", tmp_path, **{"model.model_channels": 64,
                                                       "train.num_steps": 4})
  with pytest.raises(ValueError, match="model.model_channels"):
    train.train_and_evaluate(other, str(tmp_path / "w"))


def _cli(args, **kw):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             JAX_THREEFRY_PARTITIONABLE=str(jax.config.jax_threefry_partitionable).lower(),
             JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir or "",
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
  env.pop("XLA_FLAGS", None)
  return subprocess.Popen([sys.executable, "-m", "cdm.main", *args], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def test_cli_rejects_unknown_config_field(tmp_path):
  p = _cli(["--config=configs/mnist/base16.py:tiny", f"--workdir={tmp_path}",
            "--config.train.bach_size=8"])
  out, _ = p.communicate(timeout=120)
  assert p.returncode != 0
  assert "bach_size" in out


def test_sigkill_then_restart_equals_uninterrupted(tmp_path):
  """A run SIGKILLed after its step-2 checkpoint and restarted reaches the same params at step 6."""
  common = ["--config=configs/mnist/base16.py:tiny", f"--config.data.data_dir={tmp_path / 'tfds'}",
            "--config.train.num_steps=6", "--config.train.checkpoint_every=2"]
  workdir = tmp_path / "killed"
  p = _cli(common + [f"--workdir={workdir}", "--config.train.num_steps=1000"])
  ckpt = workdir / "checkpoints" / "2"
  deadline = time.time() + 240
  while not ckpt.exists() and time.time() < deadline and p.poll() is None:
    time.sleep(0.2)
  assert ckpt.exists(), p.communicate()[0] if p.poll() is not None else "no checkpoint in time"
  p.send_signal(signal.SIGKILL)
  p.wait()
  # Restart with the real step budget: resumes from the latest complete checkpoint.
  p2 = _cli(common + [f"--workdir={workdir}"])
  out, _ = p2.communicate(timeout=300)
  assert p2.returncode == 0, out
  c = tiny("configs/mnist/base16.py", tmp_path, **{"train.num_steps": 6,
                                                   "train.checkpoint_every": 2})
  reference = train.train_and_evaluate(c, str(tmp_path / "straight"))
  restored, step = checkpointing.load_params(str(workdir), c, use_ema=False)
  assert step == 6
  leaves_close(reference.params, restored, atol=2e-5)
