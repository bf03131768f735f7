"""One training loop for every stage of a cascade (base and super-resolution).

A stage differs from another only by its config. The loop:
  * builds the mesh, the model, the diffusion and the optimizer from the config;
  * restores the latest checkpoint of ``workdir`` if there is one (exact resume: state, RNG and the
    input pipeline's position), else initialises;
  * runs one jitted ``train_step`` per batch (conditioning augmentation, loss, gradients, Adam, EMA,
    non-finite guard: all on device), writes metrics, checkpoints and sample grids periodically;
  * saves and exits cleanly on SIGTERM / preemption.
"""

from __future__ import annotations

import functools
import signal
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions

from cdm import checkpointing, config_base, fileio, images, optim, perf, sharding, stage_sampler
from cdm import xla_options
from cdm import data as data_lib
from cdm import models
from cdm.diffusion import augment as augment_lib
from cdm.diffusion import gaussian
from cdm.models import noisy_classifier


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: number of steps taken (skipped ones included).
  params: Any
  ema_params: Any
  opt_state: Any
  rng: jax.Array  # Base key; the key of step n is fold_in(rng, n).
  nonfinite_run: jax.Array  # Consecutive skipped steps so far.
  nonfinite_total: jax.Array  # All skipped steps.


def dummy_inputs(config, batch: int = 1):
  """Model inputs of the right shapes (for init and abstract evaluation)."""
  d = config.data
  x = jnp.zeros((batch, d.image_size, d.image_size, d.channels), jnp.float32)
  t = jnp.zeros((batch,), jnp.float32)
  kw = {}
  if config.model.class_conditional:
    kw["y"] = jnp.zeros((batch,), jnp.int32)
  if d.low_res_size:
    kw["low_res"] = jnp.zeros((batch, d.low_res_size, d.low_res_size, d.channels), jnp.float32)
    if config.model.aug_level_embedding:
      kw["aug_level"] = jnp.zeros((batch,), jnp.float32)
  return x, t, kw


def init_state(config, model, tx, key) -> TrainState:
  """Fresh TrainState: params from ``fold_in(key, 0)``; EMA starts equal to the params."""
  x, t, kw = dummy_inputs(config)
  params = model.init({"params": jax.random.fold_in(key, 0)}, x, t, train=False, **kw)["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                    opt_state=tx.init(params), rng=key,
                    nonfinite_run=jnp.zeros((), jnp.int32),
                    nonfinite_total=jnp.zeros((), jnp.int32))


def train_step(state: TrainState, batch: dict, *, config, model, diffusion, tx):
  """One optimisation step; pure, jitted by the caller. Returns (new_state, metrics)."""
  key = jax.random.fold_in(state.rng, state.step)
  k_aug, k_t, k_noise, k_drop, k_cfg = jax.random.split(key, 5)
  x0 = images.to_float(batch["image"])
  b = x0.shape[0]
  kw = {}
  if config.model.class_conditional:
    y = batch["label"].astype(jnp.int32)
    if config.train.class_dropout_prob:
      drop = jax.random.bernoulli(k_cfg, config.train.class_dropout_prob, (b,))
      y = jnp.where(drop, stage_sampler.null_label(config), y)
    kw["y"] = y
  if config.data.low_res_size:
    low_res, level = augment_lib.augment_low_res(
        k_aug, images.to_float(batch["low_res"]), config.augment, train=True)
    kw["low_res"] = low_res
    if config.model.aug_level_embedding:
      kw["aug_level"] = level
  is_classifier = config.kind == "classifier"
  if is_classifier:  # t stratified over the accuracy buckets (uniform marginal)
    buckets = config.classifier.t_buckets
    t = noisy_classifier.stratified_timesteps(k_t, b, diffusion.num_timesteps, buckets)
  else:
    t = jax.random.randint(k_t, (b,), 0, diffusion.num_timesteps)
  noise = jax.random.normal(k_noise, x0.shape, jnp.float32)

  def loss_fn(params):
    def model_fn(x_t, t_model):
      return model.apply({"params": params}, x_t, t_model, train=True,
                         rngs={"dropout": k_drop}, **kw)
    if is_classifier:  # cross-entropy of p(y | x_t) on x_t = q_sample(x_0, t)
      terms = noisy_classifier.training_losses(model_fn, diffusion, x0, batch["label"], t, noise,
                                               buckets)
    else:
      terms = diffusion.training_losses(model_fn, x0, t, noise)
    return jnp.mean(terms["loss"]), terms

  (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grad_norm = optimizer_global_norm(grads)
  updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
  new_params = jax.tree.map(lambda p, u: p + u, state.params, updates)
  new_ema = optim.ema_update(state.ema_params, new_params, optim.ema_decay(config.train, state.step))
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  run = jnp.where(finite, 0, state.nonfinite_run + 1)
  new_state = state.replace(
      step=state.step + 1,
      params=keep(new_params, state.params),
      ema_params=keep(new_ema, state.ema_params),
      opt_state=keep(new_opt_state, state.opt_state),
      nonfinite_run=run,
      nonfinite_total=state.nonfinite_total + (~finite).astype(jnp.int32))
  metrics = {
      "loss": loss,
      "grad_norm": grad_norm,
      "skipped": (~finite).astype(jnp.float32),
      "nonfinite_run": run,
      "lr": optim.learning_rate_schedule(config.train)(state.step),
  }
  if "mse" in terms:
    metrics["mse"] = jnp.mean(terms["mse"])
  if "vb" in terms:
    metrics["vb"] = jnp.mean(terms["vb"])
  metrics.update(terms.get("metrics", {}))  # classifier: accuracy, accuracy_t{k}
  return new_state, metrics


def optimizer_global_norm(tree):
  leaves = jax.tree.leaves(tree)
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


class _Preemption:
  """Turns SIGTERM into a flag the loop checks between steps (no host sync)."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread (e.g. a notebook worker): no handler
      self._previous = None
    return self

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    logging.warning("SIGTERM received: saving a checkpoint and exiting.")
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _write_config(config, workdir):
  if jax.process_index() == 0:
    fileio.save_json(fileio.join(workdir, "config.json"), config.to_dict())


class SampleGrid:
  """Periodic EMA sample grids: class-conditional; SR stages use held-out low-res inputs."""

  def __init__(self, config, model, workdir, writer):
    self.config, self.workdir, self.writer = config, workdir, writer
    n = config.train.num_samples
    self.labels = jnp.asarray(np.arange(n) % config.data.num_classes, jnp.int32)
    self.low_res = None
    if config.data.low_res_size:
      held_out = data_lib.create_eval_iterator(config, split=config.data.eval_split,
                                               batch_size=n, num_examples=n)
      batch = next(iter(held_out))
      self.low_res = jnp.asarray(images.to_float(batch["low_res"][:n]))
      self.labels = jnp.asarray(batch["label"][:n], jnp.int32)
    self.sampler = stage_sampler.make_stage_sampler(
        config, model, num_steps=config.train.sample_steps)

  def __call__(self, state: TrainState, step: int):
    key = jax.random.fold_in(jax.random.PRNGKey(self.config.seed + 1), step)
    out = self.sampler(state.ema_params, key, self.labels, self.low_res,
                       self.config.sample.aug_level)
    grid = images.make_grid(images.to_uint8(out), ncols=min(10, len(self.labels)))
    path = fileio.join(self.workdir, "samples", f"step_{step:08d}.png")
    if jax.process_index() == 0:
      images.save_png(path, grid, scale=max(1, 128 // self.config.data.image_size))
      self.writer.write_images(step, {"samples": grid[None]})
    logging.info("Wrote sample grid %s", path)
    return path


def build(config):
  """Model, diffusion and optimizer of a stage (no arrays allocated)."""
  model = models.create_model(config)
  diffusion = gaussian.create_diffusion(config.diffusion)
  tx = optim.make_optimizer(config.train)
  return model, diffusion, tx


def make_train_step(config, model, diffusion, tx, mesh, state_sh):
  """The jitted train step: batch sharded over the mesh, state as ``state_sh``, state donated."""
  return xla_options.jit(
      functools.partial(train_step, config=config, model=model, diffusion=diffusion, tx=tx),
      config, mesh.devices.flat[0].platform, in_shardings=(state_sh, sharding.batch_sharding(mesh)),
      out_shardings=(state_sh, sharding.replicated(mesh)), donate_argnums=(0,))


def state_shardings(config, model, tx, mesh):
  """(abstract TrainState, its shardings on ``mesh``), without allocating anything."""
  key = jax.random.PRNGKey(config.seed)
  abstract = jax.eval_shape(functools.partial(init_state, config, model, tx), key)
  return abstract, sharding.state_shardings(abstract, mesh, config.mesh.fsdp_min_size)


def fresh_setup(config, mesh, key=None):
  """A freshly initialised stage on ``mesh`` (benchmarks and tests; training also restores).

  Returns ``(model, diffusion, tx, state_sh, state, step_fn)``: ``state`` is initialised from
  ``key`` (default ``PRNGKey(config.seed)``) with shardings ``state_sh``, ``step_fn`` the jitted
  train step (:func:`make_train_step`).
  """
  model, diffusion, tx = build(config)
  _, state_sh = state_shardings(config, model, tx, mesh)
  key = jax.random.PRNGKey(config.seed) if key is None else key
  state = jax.jit(functools.partial(init_state, config, model, tx), out_shardings=state_sh)(key)
  step_fn = make_train_step(config, model, diffusion, tx, mesh, state_sh)
  return model, diffusion, tx, state_sh, state, step_fn


def train_and_evaluate(config, workdir: str) -> TrainState:
  """Trains the stage described by ``config`` in ``workdir`` (resuming if it holds a checkpoint)."""
  config_base.validate(config)
  xla_options.check(config)
  workdir = fileio.resolve(workdir)
  fileio.makedirs(workdir)
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch_divisible(config.train.batch_size, mesh)
  model, diffusion, tx = build(config)

  # Fail early on a missing dataset, before anything is compiled.
  data_it = data_lib.create_train_iterator(config)

  key = jax.random.PRNGKey(config.seed)
  abstract, state_sh = state_shardings(config, model, tx, mesh)
  ckpt = checkpointing.Checkpointer(workdir, config.train)
  latest = ckpt.latest_step()
  if latest is not None:
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, state_sh)
    state, data_state = ckpt.restore(target, config)
    data_it.set_state(data_state)
    logging.info("Resumed from %s at step %d.", ckpt.directory, latest)
  else:
    state = jax.jit(functools.partial(init_state, config, model, tx), out_shardings=state_sh)(key)
  _write_config(config, workdir)
  start = int(jax.device_get(state.step))

  batch_sh = sharding.batch_sharding(mesh)
  step_fn = make_train_step(config, model, diffusion, tx, mesh, state_sh)

  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0, asynchronous=True)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))
  logging.info("Stage %s: %d parameters, %d devices, global batch %d.", config.stage_name,
               n_params, mesh.devices.size, config.train.batch_size)
  writer.write_hparams({"num_params": n_params, **{k: v for k, v in
                                                   checkpointing.architecture(config).items()
                                                   if isinstance(v, (int, float, str, bool))}})
  total = config.train.num_steps
  hooks, report = [], None
  if jax.process_index() == 0:
    # Called right after the log-point sync, so its steps/s and ETA are real, not dispatch rates.
    report = periodic_actions.ReportProgress(num_train_steps=total, writer=writer,
                                             every_steps=config.train.log_every)
    if config.train.profile_steps:
      hooks.append(periodic_actions.Profile(num_profile_steps=config.train.profile_steps,
                                            first_profile=start + 10, logdir=workdir))
  grid = (SampleGrid(config, model, workdir, writer)
          if config.train.sample_every and config.kind != "classifier" else None)

  flops_per_step, peak = 0.0, 0.0
  pending, t_last, step_last = [], time.perf_counter(), start
  n_dev = mesh.devices.size
  with _Preemption() as preempt:
    step = start
    while step < total:
      batch = sharding.host_batch_to_global(next(data_it), batch_sh)
      if not flops_per_step:
        t_compile = time.perf_counter()
        compiled = step_fn.lower(state, batch).compile()
        flops_per_step = perf.compiled_flops(compiled)
        peak = perf.peak_flops_per_device(config.train.peak_flops_per_device)
        logging.info("Compiled train step in %.1fs: %.3g FLOPs/step.",
                     time.perf_counter() - t_compile, flops_per_step)
        t_last = time.perf_counter()  # throughput excludes compilation
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        state, metrics = step_fn(state, batch)
      step += 1
      pending.append(metrics)
      for h in hooks:
        h(step)
      last = step == total
      if step % config.train.log_every == 0 or last:
        fetched = jax.device_get(pending)
        pending = []
        now = time.perf_counter()
        steps_per_s = (step - step_last) / max(now - t_last, 1e-9)
        t_last, step_last = now, step
        scalars = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]
                   if k != "nonfinite_run"}
        scalars["skipped"] = float(np.sum([m["skipped"] for m in fetched]))
        scalars["images_per_sec_per_device"] = steps_per_s * config.train.batch_size / n_dev
        if flops_per_step:
          # cost_analysis reports the per-device program of an SPMD computation.
          scalars["flops_per_sec_per_device"] = flops_per_step * steps_per_s
          if peak:
            scalars["mfu"] = scalars["flops_per_sec_per_device"] / peak
        writer.write_scalars(step, scalars)
        worst = max(int(m["nonfinite_run"]) for m in fetched)
        if worst >= config.train.max_consecutive_nonfinite:
          ckpt.close()
          writer.close()
          raise FloatingPointError(
              f"{worst} consecutive training steps had a non-finite loss or gradient (up to step "
              f"{step}); params were left unchanged by them. Lower train.learning_rate, keep "
              "train.grad_clip_norm > 0, or check the data. The last good checkpoint is in "
              f"{ckpt.directory}.")
      if report is not None:  # every step; on log steps it runs right after the sync above
        report(step)
      if grid is not None and (step % config.train.sample_every == 0 or last):
        grid(state, step)
      stop = ckpt.reached_preemption(step)  # all hosts agree (JAX preemption sync point)
      if preempt.requested and jax.process_count() == 1:
        stop = True  # single host: SIGTERM alone decides; multi-host relies on the sync point

      if step % config.train.checkpoint_every == 0 or last or stop:
        ckpt.save(step, state, data_it.get_state(), config, force=True)
      if stop:
        logging.warning("Preempted at step %d: checkpoint saved, exiting.", step)
        break
  ckpt.close()
  writer.flush()
  writer.close()
  return state
