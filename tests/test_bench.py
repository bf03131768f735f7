"""cdm.bench: JSON + Markdown for a tiny stage; no host synchronisation inside train / sample loops."""

import json

import jax
import jax.numpy as jnp
import numpy as np

from cdm import bench, cascade_config, perf, sharding, stage_sampler, train, xla_options


def small(path="configs/mnist/base16.py", **overrides):
  """The tiny variant shrunk further (8x8, one level, mse loss) so compiles stay short."""
  c = cascade_config.load_stage_config(path, "tiny")
  c.unlock()
  c.data.image_size = 8
  c.model.channel_mult = (1,)
  c.model.attention_resolutions = (8,)
  c.model.learn_sigma = False
  c.diffusion.model_var_type = "fixed_small"
  c.diffusion.loss_type = "mse"
  c.train.batch_size = 8
  for k, v in overrides.items():
    node = c
    *parents, leaf = k.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = v
  c.lock()
  return c


def test_bench_writes_json_and_markdown(tmp_path):
  c = small()
  result = bench.run(c, parts=("train", "sample"), steps=2, warmup=1, sample_steps=(3,),
                     sample_repeats=1, peak_override=1e11)
  jpath, mpath = bench.write(result, str(tmp_path / "b"))
  loaded = json.loads(open(jpath).read())
  (stage,) = loaded["stages"]
  (tr,) = stage["train"]
  assert tr["devices"] == 8 and tr["batch_size"] == 8 and len(tr["step_times_s"]) == 2
  assert tr["flops_per_step"] > 0 and tr["step_s"] > 0 and tr["compile_s"] > 0
  np.testing.assert_allclose(tr["mfu"], tr["flops_per_step"] / tr["step_s"] / 1e11, rtol=1e-6)
  assert tr["memory"]["temp_size_in_bytes"] >= 0
  (sm,) = stage["sample"]
  assert sm["steps"] == 3 and sm["loop_overhead"] > 0 and sm["images_per_s"] > 0
  md = open(mpath).read()
  assert "## Train step" in md and "## Sampling (one stage)" in md and "loop overhead" in md
  assert "mnist_base16" in md
  assert stage["compiler_options"] == xla_options.parse(c.xla.cpu_options)  # what was compiled
  assert "Compiler options (config.xla)" in md


def test_mfu_counts_model_flops_not_remat_recompute():
  plain = bench.bench_train(small(), steps=1, warmup=1)
  remat = bench.bench_train(small(**{"model.remat": True}), steps=1, warmup=1)
  # remat recomputes the forward: more work compiled, the same model FLOPs for MFU.
  assert remat["compiled_flops_per_step"] > 1.05 * plain["compiled_flops_per_step"]
  np.testing.assert_allclose(remat["flops_per_step"], plain["flops_per_step"], rtol=0.02)


def test_measured_cpu_peak_uses_every_host_device():
  m = perf.measured_cpu_peak(n=128, repeats=2)
  assert m["matmul_1dev_flops"] > 0 and m["matmul_alldev_flops"] > 0
  assert m["peak_flops"] == max(m["matmul_1dev_flops"], m["matmul_alldev_flops"])


def test_train_steps_and_sampler_do_not_sync_with_the_host():
  """Several compiled train steps and a compiled sampler run with implicit transfers disallowed
  and no device-to-host transfer at all (not even explicit): nothing in them waits on the host."""
  c = small()  # the same programs as the test above (shared through the compilation cache)
  mesh = sharding.make_mesh(c.mesh)
  model, _, _, _, state, step = train.fresh_setup(c, mesh, jax.random.PRNGKey(0))
  batch = sharding.host_batch_to_global(bench.synthetic_batch(c, 8), sharding.batch_sharding(mesh))
  compiled = step.lower(state, batch).compile()
  sampler = stage_sampler.make_stage_sampler(c, model, num_steps=3)
  params = jax.device_put(bench.random_params(c, model), sharding.replicated(mesh))
  labels, low_res, level = bench._sampler_inputs(c, 8, mesh)  # pylint: disable=protected-access
  key = jax.device_put(jax.random.PRNGKey(1), sharding.replicated(mesh))
  sample = sampler.lower(params, key, labels, low_res, level).compile()
  with jax.transfer_guard("disallow"), jax.transfer_guard_device_to_host("disallow_explicit"):
    pending = []
    for _ in range(3):
      state, metrics = compiled(state, batch)
      pending.append(metrics)
    out = sample(params, key, labels, low_res, level)
  jax.block_until_ready((state, pending, out))
  assert int(state.step) == 3
  assert out.shape == (8, 8, 8, 1) and bool(jnp.all(jnp.isfinite(out)))


def test_im2col_conv_matches_xla_conv_and_its_gradients():
  """model.conv_impl="im2col" (an XLA:CPU speed option) computes the same conv and gradients."""
  from cdm.models import layers  # pylint: disable=g-import-not-at-top
  kx, kw = jax.random.split(jax.random.PRNGKey(0))
  x = jax.random.normal(kx, (2, 8, 8, 32))
  for shape, strides, padding in (((3, 3, 32, 16), (1, 1), ((1, 1), (1, 1))),
                                  ((3, 3, 32, 16), (2, 2), ((1, 1), (1, 1))),
                                  ((1, 1, 32, 16), (1, 1), "SAME")):
    w = jax.random.normal(kw, shape) * 0.1
    ref = lambda a, b, s=strides, p=padding: jax.lax.conv_general_dilated(
        a, b, s, p, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    new = lambda a, b, s=strides, p=padding: layers.conv_im2col(a, b, s, p)
    np.testing.assert_allclose(new(x, w), ref(x, w), rtol=1e-5, atol=1e-5)
    g_ref = jax.grad(lambda a, b: jnp.sum(ref(a, b) ** 2), (0, 1))(x, w)
    g_new = jax.grad(lambda a, b: jnp.sum(new(a, b) ** 2), (0, 1))(x, w)
    for a, b in zip(g_new, g_ref):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
