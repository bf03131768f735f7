r"""Benchmarks a stage or a cascade: train step, sampling, input pipeline. Writes JSON + Markdown.

  python -m cdm.bench --config=configs/mnist/base16.py:tiny --workdir=workdirs/bench/base16_tiny
  python -m cdm.bench --config=configs/mnist/sr16_32.py --workdir=workdirs/bench/sr16_32 \
      --config.train.batch_size=64 --host_devices=2
  python -m cdm.bench --config=configs/cascades/mnist.py:tiny --workdir=workdirs/bench/cascade \
      --sample_steps=10,50
  python -m cdm.bench --config=configs/sr64_256.py --workdir=gs://b/bench --variants=all   # TPU/GPU

Measured (``<workdir>/bench.json`` and ``bench.md``):

* train: compile time; steady-state step time (median of ``--steps`` timed steps after ``--warmup``,
  each ended by ``block_until_ready``) and the back-to-back (pipelined) step time; images/s; FLOPs
  per step from the compiled program's cost analysis (summed over the devices of the mesh); achieved
  FLOP/s and utilisation (MFU) against a peak: on CPU the peak is measured in the same run (a large
  float32 matmul through jax, see :func:`cdm.perf.measured_cpu_peak`), on TPU/GPU the device kind's
  published bf16 peak times the device count. Peak device memory when the backend reports it, and the
  compiled program's memory analysis (temp / argument bytes) on every backend.
  ``--variants`` adds bfloat16 compute and remat runs (memory vs speed; default on accelerators).
* sample: images/s of a full stage chain (``--sample_steps``) and of the full cascade; loop overhead
  = compiled sampler time / (steps x one compiled model forward at the same batch).
* pipeline: images/s the TFDS input pipeline delivers (``cdm.data.bench``) vs what the train step
  consumes, and their ratio.

Any config field can be overridden (``--config.model.model_channels=64``); for a cascade config the
stages are ``--config.stages.<name>.config.<field>``. ``--host_devices=N`` splits the CPU into N XLA
host devices (set before JAX starts) and the batch is data-parallel over them.
"""

from __future__ import annotations

import copy
import os
import statistics
import time

from absl import app, flags, logging
from ml_collections import config_flags


def _define_flags():
  """Flags exist only when this module runs as a command (importing it, e.g. from tests, never
  clashes with cdm.main's --config / --workdir)."""
  config_flags.DEFINE_config_file(
      "config", None, "Stage or cascade config file (path[:variant]).", lock_config=True)
  flags.DEFINE_string("workdir", None, "Output directory for bench.json / bench.md.")
  flags.DEFINE_list("parts", ["train", "sample", "pipeline"],
                    "What to measure: train, sample, pipeline.")
  flags.DEFINE_integer("steps", 10, "Timed train steps (median reported).")
  flags.DEFINE_integer("warmup", 3, "Untimed train steps after compilation.")
  flags.DEFINE_list(
      "sample_steps", [], "Sampling step counts; empty = the stage's sample.num_steps (cascade: each "
      "entry's num_steps).")
  flags.DEFINE_integer(
      "sample_batch", 0, "Sampling batch; 0 = train.batch_size (cascade: its batch_size).")
  flags.DEFINE_integer("sample_repeats", 3, "Timed sampler calls (median).")
  flags.DEFINE_integer("pipeline_batches", 100, "Timed input-pipeline batches.")
  flags.DEFINE_list(
      "variants", ["auto"], "Train-step variants: default, bf16, remat, bf16_remat, all; auto = "
      "default on CPU, all on accelerators.")
  flags.DEFINE_integer(
      "host_devices", 0, "CPU only: number of XLA host devices (0 = leave XLA_FLAGS as they are).")
  flags.DEFINE_float("peak_flops", 0.0, "Peak FLOP/s of the whole mesh; 0 = CPU: measured, "
                     "accelerator: published bf16 peak x devices.")
  flags.mark_flags_as_required(["config", "workdir"])


VARIANTS = {"default": {}, "bf16": {"model.dtype": "bfloat16"}, "remat": {"model.remat": True},
            "bf16_remat": {"model.dtype": "bfloat16", "model.remat": True}}


def _median_time(fn, repeats: int) -> tuple[float, list[float]]:
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times), times


def _override(config, overrides: dict):
  c = copy.deepcopy(config)
  for path, value in overrides.items():
    node = c
    *parents, leaf = path.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def synthetic_batch(config, batch_size: int, seed: int = 0) -> dict:
  """A host batch shaped like the input pipeline's (uint8 images, int32 labels)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  d = config.data
  out = {"image": rng.integers(0, 256, (batch_size, d.image_size, d.image_size, d.channels),
                               dtype=np.uint8),
         "label": rng.integers(0, d.num_classes, (batch_size,), dtype=np.int32)}
  if d.low_res_size:
    out["low_res"] = rng.integers(0, 256, (batch_size, d.low_res_size, d.low_res_size, d.channels),
                                  dtype=np.uint8)
  return out


def _memory(compiled) -> dict:
  """Compiled memory analysis (all backends) and the backend's peak bytes (if it reports them)."""
  import jax  # pylint: disable=g-import-not-at-top
  out = {}
  try:
    m = compiled.memory_analysis()
    for k in ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes",
              "alias_size_in_bytes", "generated_code_size_in_bytes"):
      if hasattr(m, k):
        out[k] = int(getattr(m, k))
  except Exception:  # pylint: disable=broad-except
    pass
  try:
    stats = jax.local_devices()[0].memory_stats() or {}
  except Exception:  # pylint: disable=broad-except
    stats = {}
  if "peak_bytes_in_use" in stats:
    out["peak_bytes_in_use"] = int(stats["peak_bytes_in_use"])
  return out


def peak_flops(override: float = 0.0) -> dict:
  """Peak FLOP/s of the whole mesh and where it comes from."""
  import jax  # pylint: disable=g-import-not-at-top
  from cdm import perf  # pylint: disable=g-import-not-at-top
  if override:
    return {"peak_flops": float(override), "peak_source": "--peak_flops"}
  device = jax.devices()[0]
  if device.platform == "cpu":
    m = perf.measured_cpu_peak()
    return {"peak_flops": m["peak_flops"], "peak_source": "measured float32 matmul", **m}
  per = perf.peak_flops_per_device()
  return {"peak_flops": per * jax.device_count(),
          "peak_source": f"published bf16 peak of {device.device_kind} x {jax.device_count()}"}


def bench_train(config, *, steps: int = 10, warmup: int = 3, peak: float = 0.0) -> dict:
  """Compiles and times the production train step on a synthetic batch (see the module doc)."""
  import jax  # pylint: disable=g-import-not-at-top
  from cdm import perf, sharding, train  # pylint: disable=g-import-not-at-top
  from cdm.models import layers  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch_divisible(config.train.batch_size, mesh)
  _, _, _, state_sh, state, step_fn = train.fresh_setup(config, mesh)
  batch = sharding.host_batch_to_global(synthetic_batch(config, config.train.batch_size),
                                        sharding.batch_sharding(mesh))
  t0 = time.perf_counter()
  lowered = step_fn.lower(state, batch)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  n_dev = mesh.devices.size
  # cost_analysis describes the per-device SPMD program.
  flops = perf.compiled_flops(compiled) * n_dev
  # MFU counts the model's FLOPs once: from the lowered, unpartitioned program (global FLOPs; on one
  # device within ~1% of the compiled count), with XLA's convolution and without remat, so neither
  # im2col's padding zeros, nor remat's recomputed forward, nor the optimizer update every device
  # repeats on replicated parameters is counted. The compiled count x devices (the work done) is
  # kept as compiled_flops_per_step.
  im2col = layers.conv_general_dilated_fn(str(config.model.get("conv_impl", "xla"))) is not None
  if im2col or bool(config.model.remat):
    xc = _override(config, {"model.conv_impl": "xla", "model.remat": False})
    xm, xd, xt = train.build(xc)
    lowered = train.make_train_step(xc, xm, xd, xt, mesh, state_sh).lower(state, batch)
  model_flops = perf.compiled_flops(lowered) or flops
  for _ in range(max(warmup, 1)):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(state)

  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - t0)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch)
  jax.block_until_ready((state, metrics))
  pipelined = (time.perf_counter() - t0) / max(steps, 1)
  step_s = statistics.median(times)
  b = config.train.batch_size
  out = {"batch_size": b, "devices": n_dev, "compile_s": compile_s, "step_s": step_s,
         "step_times_s": times, "pipelined_step_s": pipelined, "images_per_s": b / step_s,
         "flops_per_step": model_flops, "compiled_flops_per_step": flops,
         "achieved_flops": model_flops / step_s,
         "dtype": str(config.model.dtype), "remat": bool(config.model.remat),
         "conv_impl": str(config.model.get("conv_impl", "xla")),
         "memory": _memory(compiled)}
  if peak:
    out["peak_flops"] = peak
    out["mfu"] = out["achieved_flops"] / peak
  return out


def random_params(config, model, seed: int = 0):
  import jax  # pylint: disable=g-import-not-at-top
  from cdm import train  # pylint: disable=g-import-not-at-top
  x, t, kw = train.dummy_inputs(config)
  init = jax.jit(lambda k: model.init({"params": k}, x, t, train=False, **kw)["params"])
  return init(jax.random.PRNGKey(seed))


def _sampler_inputs(config, batch: int, mesh):
  """Device-resident (labels, low_res, aug_level) for a stage sampler."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from cdm import sharding  # pylint: disable=g-import-not-at-top
  bsh = sharding.batch_sharding(mesh)
  labels = jax.device_put(jnp.arange(batch, dtype=jnp.int32) % config.data.num_classes, bsh)
  low_res = None
  if config.data.low_res_size:
    r, c = config.data.low_res_size, config.data.channels
    low_res = jax.device_put(jnp.zeros((batch, r, r, c), jnp.float32), bsh)
  level = jax.device_put(jnp.asarray(int(config.sample.aug_level), jnp.int32),
                         sharding.replicated(mesh))
  return labels, low_res, level


def make_forward(config, model, batch: int):
  """A jitted single model forward at the sampler's shapes (2x batch under guidance)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from cdm import xla_options  # pylint: disable=g-import-not-at-top
  reps = 2 if config.sample.guidance_scale else 1
  n = batch * reps
  d = config.data

  def fwd(params, x, t, y, low_res):
    kw = {}
    if config.model.class_conditional:
      kw["y"] = y
    if d.low_res_size:
      kw["low_res"] = low_res
      if config.model.aug_level_embedding:
        kw["aug_level"] = jnp.zeros((n,), jnp.float32)
    return model.apply({"params": params}, x, t, train=False, **kw)

  x = jnp.zeros((n, d.image_size, d.image_size, d.channels), jnp.float32)
  t = jnp.full((n,), 10.0, jnp.float32)
  y = jnp.zeros((n,), jnp.int32)
  low_res = (jnp.zeros((n, d.low_res_size, d.low_res_size, d.channels), jnp.float32)
             if d.low_res_size else None)
  return xla_options.jit(fwd, config), (x, t, y, low_res)


def bench_stage_sampling(config, model, params, *, steps_list, batch: int, repeats: int = 3,
                         mesh=None) -> list[dict]:
  """Images/s and loop overhead of the compiled stage sampler at each step count."""
  import jax  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from cdm import sharding, stage_sampler  # pylint: disable=g-import-not-at-top
  mesh = mesh or sharding.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1}))
  params = jax.device_put(params, sharding.replicated(mesh))
  fwd, fwd_args = make_forward(config, model, batch)
  fwd_args = jax.device_put(fwd_args, sharding.batch_sharding(mesh))
  fwd_c = fwd.lower(params, *fwd_args).compile()
  jax.block_until_ready(fwd_c(params, *fwd_args))
  labels, low_res, level = _sampler_inputs(config, batch, mesh)
  key = jax.device_put(jax.random.PRNGKey(0), sharding.replicated(mesh))
  rows = []
  for n in steps_list:
    sampler = stage_sampler.make_stage_sampler(config, model, num_steps=int(n))
    t0 = time.perf_counter()
    compiled = sampler.lower(params, key, labels, low_res, level).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(params, key, labels, low_res, level))
    # Forward and sampler timings interleaved, so a change of machine load hits both alike.
    runs, fwds = [], []
    for _ in range(repeats):
      fwds.append(_median_time(lambda: jax.block_until_ready(fwd_c(params, *fwd_args)), 5)[0])
      runs.append(_median_time(
          lambda c=compiled: jax.block_until_ready(c(params, key, labels, low_res, level)), 1)[0])
    run_s = statistics.median(runs)
    rows.append({"stage": config.stage_name, "steps": int(n), "batch": batch,
                 "compile_s": compile_s, "sample_s": run_s, "images_per_s": batch / run_s,
                 "forward_s": statistics.median(fwds), "sample_times_s": runs,
                 "forward_times_s": fwds,
                 "loop_overhead": statistics.median(r / (int(n) * f) for r, f in zip(runs, fwds)),
                 "guidance": bool(config.sample.guidance_scale)})
  return rows


def bench_cascade_sampling(config, *, steps_list, batch: int, repeats: int = 3) -> list[dict]:
  """Images/s of a whole cascade (random params) at each step count (all stages)."""
  import jax  # pylint: disable=g-import-not-at-top
  from cdm import cascade, models  # pylint: disable=g-import-not-at-top
  params = {name: random_params(config.stages[name].config,
                                models.create_model(config.stages[name].config))
            for name in config.order}
  rows = []
  for n in steps_list:
    c = copy.deepcopy(config)
    if n:
      for name in c.order:
        c.stages[name].num_steps = int(n)
    casc = cascade.Cascade(c, params=params)
    labels, _, _ = _sampler_inputs(c.stages[c.order[0]].config, batch, casc.mesh)
    key = jax.random.PRNGKey(0)
    run = lambda: jax.block_until_ready(casc.sample_batch(key, labels))
    t0 = time.perf_counter()
    run()  # compiles every stage
    first_s = time.perf_counter() - t0
    run_s, _ = _median_time(run, repeats)
    rows.append({"stage": "cascade(" + "->".join(c.order) + ")",
                 "steps": {name: int(c.stages[name].num_steps) for name in c.order},
                 "batch": batch, "first_call_s": first_s, "sample_s": run_s,
                 "images_per_s": batch / run_s})
  return rows


def bench_pipeline(config, consumed_images_per_s: float = 0.0, num_batches: int = 100) -> dict:
  from cdm.data import bench as data_bench  # pylint: disable=g-import-not-at-top
  r = data_bench.run(config, num_batches=num_batches, warmup=10)
  out = {"delivered_images_per_s": r["images_per_s"], "batch_size": r["batch_size"],
         "first_batch_s": r["first_batch_s"]}
  if consumed_images_per_s:
    out["consumed_images_per_s"] = consumed_images_per_s
    out["ratio"] = r["images_per_s"] / consumed_images_per_s
  return out


def _variants(names, platform: str):
  names = [n.strip() for n in names if n.strip()]
  if names in ([], ["auto"]):
    names = ["default"] if platform == "cpu" else ["all"]
  if "all" in names:
    names = list(VARIANTS)
  bad = [n for n in names if n not in VARIANTS]
  if bad:
    raise app.UsageError(f"--variants: unknown {bad}; expected {list(VARIANTS)} or all/auto.")
  return names


def bench_stage(config, *, parts=("train", "sample", "pipeline"), steps=10, warmup=3,
                sample_steps=(), sample_batch=0, sample_repeats=3, pipeline_batches=100,
                variants=("default",), peak=0.0) -> dict:
  """All measurements of one stage config."""
  from cdm import config_base, models, xla_options  # pylint: disable=g-import-not-at-top
  config_base.validate(config)
  out = {"stage": config.stage_name, "train": [], "sample": [], "pipeline": None,
         "compiler_options": xla_options.for_platform(config) or {}}
  consumed = 0.0
  if "train" in parts:
    for v in variants:
      r = bench_train(_override(config, VARIANTS[v]), steps=steps, warmup=warmup, peak=peak)
      r["variant"] = v
      out["train"].append(r)
      logging.info("train %s %s: %.4g s/step, %.1f img/s, MFU %s", config.stage_name, v,
                   r["step_s"], r["images_per_s"], r.get("mfu"))
    consumed = out["train"][0]["images_per_s"]
  if "sample" in parts:
    model = models.create_model(config)
    out["sample"] = bench_stage_sampling(
        config, model, random_params(config, model),
        steps_list=list(sample_steps) or [config.sample.num_steps],
        batch=sample_batch or config.train.batch_size, repeats=sample_repeats)
  if "pipeline" in parts:
    out["pipeline"] = bench_pipeline(config, consumed, pipeline_batches)
  return out


def run(config, *, parts=("train", "sample", "pipeline"), steps=10, warmup=3, sample_steps=(),
        sample_batch=0, sample_repeats=3, pipeline_batches=100, variants=("auto",),
        peak_override=0.0) -> dict:
  """Benchmarks a stage or a cascade config; returns the JSON-able result."""
  import jax  # pylint: disable=g-import-not-at-top
  device = jax.devices()[0]
  result = {"platform": device.platform, "device_kind": device.device_kind,
            "device_count": jax.device_count(), "jax": jax.__version__,
            "cpu_count": os.cpu_count(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
  try:
    result["load_avg_at_start"] = os.getloadavg()
  except OSError:
    pass
  pk = peak_flops(peak_override) if "train" in parts else {}
  result.update(pk)
  names = _variants(variants, device.platform)
  kw = dict(parts=parts, steps=steps, warmup=warmup, sample_steps=sample_steps,
            sample_batch=sample_batch, sample_repeats=sample_repeats,
            pipeline_batches=pipeline_batches, variants=names, peak=pk.get("peak_flops", 0.0))
  if "stages" in config:
    stage_kw = dict(kw, sample_steps=sample_steps or ())
    result["stages"] = []
    for name in config.order:
      e = config.stages[name]
      skw = dict(stage_kw, sample_steps=sample_steps or (e.num_steps,),
                 sample_batch=sample_batch or config.batch_size)
      result["stages"].append(bench_stage(_entry_stage_config(e), **skw))
    if "sample" in parts:
      result["cascade"] = bench_cascade_sampling(
          config, steps_list=[int(s) for s in sample_steps] or [0],
          batch=sample_batch or config.batch_size, repeats=sample_repeats)
  else:
    result["stages"] = [bench_stage(config, **kw)]
  try:
    result["load_avg_at_end"] = os.getloadavg()
  except OSError:
    pass
  return result


def _entry_stage_config(entry):
  """A cascade entry's stage config with the entry's sampling settings as its sample defaults."""
  c = copy.deepcopy(entry.config)
  c.sample.num_steps = entry.num_steps
  c.sample.sampler = entry.sampler
  c.sample.guidance_scale = entry.guidance_scale
  c.sample.aug_level = int(entry.aug_level)
  return c


# ---------------------------------------------------------------------- reporting
def _fmt(x, digits=3):
  if x is None:
    return "-"
  if isinstance(x, float):
    return f"{x:.{digits}g}"
  return str(x)


def _gib(n):
  return "-" if not n else f"{n / 2 ** 30:.3f}"


def to_markdown(result: dict) -> str:
  lines = [f"# cdm.bench: {result['device_kind']} x {result['device_count']} "
           f"({result['platform']}, jax {result['jax']}, {result['time']})", ""]
  if "peak_flops" in result:
    lines.append(f"Peak: {result['peak_flops'] / 1e9:.1f} GFLOP/s ({result['peak_source']}).")
  if result.get("load_avg_at_start") is not None:
    lines.append(f"Load average at start / end: {_fmt(result['load_avg_at_start'][0])} / "
                 f"{_fmt(result.get('load_avg_at_end', [None])[0])} "
                 f"({result['cpu_count']} CPUs). XLA_FLAGS: `{result['xla_flags'] or '-'}`.")
  opts = sorted({f"{k}={v}" for st in result.get("stages", []) for k, v in
                 st.get("compiler_options", {}).items()})
  lines.append(f"Compiler options (config.xla): `{' '.join(opts) or '-'}`.")
  lines.append("")
  train_rows = [(s["stage"], r) for s in result["stages"] for r in s["train"]]
  if train_rows:
    lines += ["## Train step", "",
              "| stage | variant | conv | batch | devices | compile s | step ms (median) | pipelined ms | "
              "images/s | GFLOP/step | GFLOP/s | MFU | temp GiB | peak GiB |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for stage, r in train_rows:
      mem = r["memory"]
      lines.append(
          f"| {stage} | {r['variant']} | {r['conv_impl']} | {r['batch_size']} | {r['devices']} | "
          f"{r['compile_s']:.1f} | {r['step_s'] * 1e3:.2f} | {r['pipelined_step_s'] * 1e3:.2f} | "
          f"{r['images_per_s']:.1f} | {r['flops_per_step'] / 1e9:.3f} | "
          f"{r['achieved_flops'] / 1e9:.2f} | {_fmt(r.get('mfu'))} | "
          f"{_gib(mem.get('temp_size_in_bytes'))} | {_gib(mem.get('peak_bytes_in_use'))} |")
    lines.append("")
  sample_rows = [r for s in result["stages"] for r in s["sample"]]
  if sample_rows:
    lines += ["## Sampling (one stage)", "",
              "| stage | steps | batch | compile s | sample s | images/s | forward ms | "
              "loop overhead |", "|---|---|---|---|---|---|---|---|"]
    for r in sample_rows:
      lines.append(f"| {r['stage']} | {r['steps']} | {r['batch']} | {r['compile_s']:.1f} | "
                   f"{r['sample_s']:.3f} | {r['images_per_s']:.2f} | {r['forward_s'] * 1e3:.3f} | "
                   f"{r['loop_overhead']:.3f} |")
    lines.append("")
  if result.get("cascade"):
    lines += ["## Sampling (whole cascade)", "", "| cascade | steps | batch | first call s | "
              "sample s | images/s |", "|---|---|---|---|---|---|"]
    for r in result["cascade"]:
      steps = ", ".join(f"{k} {v}" for k, v in r["steps"].items())
      lines.append(f"| {r['stage']} | {steps} | {r['batch']} | {r['first_call_s']:.1f} | "
                   f"{r['sample_s']:.3f} | {r['images_per_s']:.2f} |")
    lines.append("")
  pipe_rows = [(s["stage"], s["pipeline"]) for s in result["stages"] if s.get("pipeline")]
  if pipe_rows:
    lines += ["## Input pipeline", "", "| stage | batch | delivered images/s | consumed by training "
              "images/s | ratio |", "|---|---|---|---|---|"]
    for stage, p in pipe_rows:
      lines.append(f"| {stage} | {p['batch_size']} | {p['delivered_images_per_s']:.0f} | "
                   f"{_fmt(p.get('consumed_images_per_s'))} | {_fmt(p.get('ratio'))} |")
    lines.append("")
  return "\n".join(lines)


def write(result: dict, workdir: str) -> tuple[str, str]:
  from cdm import fileio  # pylint: disable=g-import-not-at-top
  workdir = fileio.resolve(workdir)
  fileio.makedirs(workdir)
  jpath, mpath = fileio.join(workdir, "bench.json"), fileio.join(workdir, "bench.md")
  fileio.save_json(jpath, result)
  fileio.write_bytes_atomic(mpath, to_markdown(result).encode())
  return jpath, mpath


def set_host_devices(n: int) -> None:
  """Splits the CPU into ``n`` XLA host devices; must run before JAX initialises its backends."""
  if n:
    flags_ = [f for f in os.environ.get("XLA_FLAGS", "").split()
              if not f.startswith("--xla_force_host_platform_device_count")]
    os.environ["XLA_FLAGS"] = " ".join(flags_ + [f"--xla_force_host_platform_device_count={n}"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  set_host_devices(flags.FLAGS.host_devices)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")
  f = flags.FLAGS
  result = run(f.config, parts=tuple(f.parts), steps=f.steps, warmup=f.warmup,
               sample_steps=tuple(int(s) for s in f.sample_steps), sample_batch=f.sample_batch,
               sample_repeats=f.sample_repeats, pipeline_batches=f.pipeline_batches,
               variants=f.variants, peak_override=f.peak_flops)
  jpath, mpath = write(result, flags.FLAGS.workdir)
  print(to_markdown(result))
  print(f"Wrote {jpath} and {mpath}")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
