"""The ADM noisy classifier: guided-diffusion's EncoderUNetModel structure, conversion, training and
guided sampling end to end on tiny MNIST."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdm import cascade, cascade_config, checkpointing, train
from cdm.diffusion import gaussian, schedules
from cdm.models import convert
from cdm.models import noisy_classifier as nc

# Parameters of guided-diffusion's 64x64 ImageNet classifier (create_classifier(image_size=64,
# classifier_width=128, classifier_depth=4, classifier_attention_resolutions="32,16,8",
# classifier_use_scale_shift_norm=True, classifier_resblock_updown=True, classifier_pool=
# "attention")), counted by hand below (gd_state_dict_shapes), independently of the Flax module.
ADM64_CLASSIFIER_PARAMS = 65_438_568


def gd_state_dict_shapes(image_size, width, depth, mult, attention_res, pool="attention",
                         head_channels=64, num_classes=1000, in_ch=3, scale_shift=True,
                         updown=True):
  """torch state_dict {key: shape} of guided-diffusion's EncoderUNetModel, enumerated by hand.

  time_embed Linear(ch, 4ch), Linear(4ch, 4ch); stem conv; per level ``depth`` x [ResBlock (+
  AttentionBlock at ds in attention)], then a down ResBlock except at the last level; middle
  ResBlock, AttentionBlock, ResBlock; the pooling head.
  """
  sd, emb = {}, 4 * width

  def lin(k, i, o):
    sd[f"{k}.weight"], sd[f"{k}.bias"] = (o, i), (o,)

  def conv(k, i, o, ks=3):
    sd[f"{k}.weight"], sd[f"{k}.bias"] = (o, i, ks, ks), (o,)

  def gn(k, c):
    sd[f"{k}.weight"], sd[f"{k}.bias"] = (c,), (c,)

  def res(k, ci, co):
    gn(f"{k}.in_layers.0", ci)
    conv(f"{k}.in_layers.2", ci, co)
    lin(f"{k}.emb_layers.1", emb, 2 * co if scale_shift else co)
    gn(f"{k}.out_layers.0", co)
    conv(f"{k}.out_layers.3", co, co)
    if ci != co:
      conv(f"{k}.skip_connection", ci, co, 1)

  def attn(k, c):
    gn(f"{k}.norm", c)
    sd[f"{k}.qkv.weight"], sd[f"{k}.qkv.bias"] = (3 * c, c, 1), (3 * c,)
    sd[f"{k}.proj_out.weight"], sd[f"{k}.proj_out.bias"] = (c, c, 1), (c,)

  lin("time_embed.0", width, emb)
  lin("time_embed.2", emb, emb)
  ch = int(mult[0] * width)
  conv("input_blocks.0.0", in_ch, ch)
  ads = {image_size // r for r in attention_res}
  feature, i, ds = ch, 1, 1
  for level, m in enumerate(mult):
    for _ in range(depth):
      res(f"input_blocks.{i}.0", ch, int(m * width))
      ch = int(m * width)
      if ds in ads:
        attn(f"input_blocks.{i}.1", ch)
      feature += ch
      i += 1
    if level != len(mult) - 1:
      if updown:
        res(f"input_blocks.{i}.0", ch, ch)
      else:
        conv(f"input_blocks.{i}.0.op", ch, ch)
      feature += ch
      i += 1
      ds *= 2
  res("middle_block.0", ch, ch)
  attn("middle_block.1", ch)
  res("middle_block.2", ch, ch)
  feature += ch
  if pool == "attention":
    gn("out.0", ch)
    tokens = (image_size // ds) ** 2 + 1
    sd["out.2.positional_embedding"] = (ch, tokens)
    sd["out.2.qkv_proj.weight"], sd["out.2.qkv_proj.bias"] = (3 * ch, ch, 1), (3 * ch,)
    sd["out.2.c_proj.weight"], sd["out.2.c_proj.bias"] = (num_classes, ch, 1), (num_classes,)
  elif pool == "adaptive":
    gn("out.0", ch)
    conv("out.3", ch, num_classes, 1)
  elif pool == "spatial":
    lin("out.0", feature, 2048)
    lin("out.2", 2048, num_classes)
  else:  # spatial_v2
    lin("out.0", feature, 2048)
    gn("out.1", 2048)
    lin("out.3", 2048, num_classes)
  return sd


def _n(shapes):
  return int(sum(np.prod(s) for s in shapes.values()))


def test_adm64_classifier_matches_guided_diffusion_structure():
  shapes = gd_state_dict_shapes(64, 128, 4, (1, 2, 3, 4), (32, 16, 8))
  assert _n(shapes) == ADM64_CLASSIFIER_PARAMS
  cfg = cascade_config.load_stage_config("configs/classifier64.py")
  assert nc.param_count(cfg) == ADM64_CLASSIFIER_PARAMS
  convert.check_state_dict(shapes, cfg)  # every key and shape of the released checkpoint
  gd = convert.model_config_from_guided_diffusion(dict(
      image_size=64, classifier_width=128, classifier_depth=4,
      classifier_attention_resolutions="32,16,8", classifier_pool="attention"))
  assert gd.kind == "classifier" and nc.param_count(gd) == ADM64_CLASSIFIER_PARAMS


@pytest.mark.parametrize("pool", ["adaptive", "spatial", "spatial_v2"])
def test_other_pools_match_guided_diffusion_structure(pool):
  args = dict(image_size=16, classifier_width=32, classifier_depth=1, channel_mult="1,2",
              classifier_attention_resolutions="8", classifier_pool=pool, num_classes=10)
  cfg = nc.config_from_guided_diffusion(args)
  shapes = gd_state_dict_shapes(16, 32, 1, (1, 2), (8,), pool=pool, num_classes=10)
  convert.check_state_dict(shapes, cfg)
  assert nc.param_count(cfg) == _n(shapes)


def _attention_pool_numpy(x_nchw, pos, wqkv, bqkv, wc, bc, head_channels):
  """CLIP / guided-diffusion AttentionPool2d in NCHW float64 with torch-layout weights."""
  b, c = x_nchw.shape[:2]
  x = x_nchw.reshape(b, c, -1)
  x = np.concatenate([x.mean(-1, keepdims=True), x], -1) + pos[None]
  qkv = np.einsum("oc,bct->bot", wqkv[:, :, 0], x) + bqkv[None, :, None]
  q, k, v = np.split(qkv, 3, axis=1)  # [q | k | v], then heads inside each
  heads, d = c // head_channels, head_channels
  q, k, v = (a.reshape(b * heads, d, -1) for a in (q, k, v))
  w = np.einsum("bct,bcs->bts", q, k) / np.sqrt(d)
  w = np.exp(w - w.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  a = np.einsum("bts,bcs->bct", w, v).reshape(b, c, -1)
  out = np.einsum("oc,bct->bot", wc[:, :, 0], a) + bc[None, :, None]
  return out[:, :, 0]


def test_converted_attention_pool_matches_torch_semantics():
  """Random torch-layout weights -> converter -> Flax head == a float64 NCHW reference."""
  args = dict(image_size=16, classifier_width=32, classifier_depth=1, channel_mult="1,2",
              classifier_attention_resolutions="8", classifier_pool="attention", num_classes=10)
  args["in_channels"] = 1
  cfg = nc.config_from_guided_diffusion(args)
  cfg.model.num_head_channels = 16  # two heads in the pool (and the encoder's attention)
  shapes = gd_state_dict_shapes(16, 32, 1, (1, 2), (8,), head_channels=16, num_classes=10,
                                in_ch=1)
  rng = np.random.default_rng(0)
  sd = {k: rng.normal(size=s).astype(np.float32) * 0.2 for k, s in shapes.items()}
  params = convert.convert_guided_diffusion(sd, cfg)
  feats = rng.normal(size=(2, 64, 8, 8))  # NCHW features entering the pool
  head = nc.AttentionPool2d(16, 10)
  got = head.apply({"params": params["out_2"]},
                   jnp.asarray(feats.transpose(0, 2, 3, 1), jnp.float32))
  want = _attention_pool_numpy(feats, *(sd[f"out.2.{k}"].astype(np.float64) for k in (
      "positional_embedding", "qkv_proj.weight", "qkv_proj.bias", "c_proj.weight",
      "c_proj.bias")), head_channels=16)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)
  # The converted params run the whole classifier.
  model = nc.create_classifier(cfg)
  logits = model.apply({"params": params}, jnp.zeros((2, 16, 16, 1)), jnp.array([0.0, 999.0]))
  assert logits.shape == (2, 10) and np.all(np.isfinite(np.asarray(logits)))


def test_training_losses_are_cross_entropy_with_bucketed_accuracy():
  diff = gaussian.GaussianDiffusion.from_betas(schedules.get_named_beta_schedule("cosine", 1000))
  t = nc.stratified_timesteps(jax.random.PRNGKey(0), 8, 1000, 4)
  t_np = np.asarray(t)
  for i, ti in enumerate(t_np):  # example i lies in bucket i mod 4 = [250 k, 250 (k+1))
    assert 250 * (i % 4) <= ti < 250 * (i % 4 + 1)
  x0 = jax.random.uniform(jax.random.PRNGKey(1), (8, 4, 4, 1), minval=-1, maxval=1)
  noise = jax.random.normal(jax.random.PRNGKey(2), x0.shape)
  labels = jnp.array([0, 1, 2, 0, 1, 2, 0, 1])
  w = np.random.default_rng(3).normal(size=(16, 3))
  logits_fn = lambda x, tm: x.reshape(8, -1) @ jnp.asarray(w, jnp.float32) + 0.0 * tm[:, None]
  terms = nc.training_losses(logits_fn, diff, x0, labels, t, noise, num_buckets=4)
  a = np.asarray(diff.sqrt_alphas_cumprod, np.float64)[t_np].reshape(-1, 1, 1, 1)
  s = np.asarray(diff.sqrt_one_minus_alphas_cumprod, np.float64)[t_np].reshape(-1, 1, 1, 1)
  z = (a * np.asarray(x0) + s * np.asarray(noise)).reshape(8, -1) @ w
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  np.testing.assert_allclose(np.asarray(terms["loss"]), -logp[np.arange(8), labels], rtol=1e-4)
  correct = z.argmax(-1) == np.asarray(labels)
  m = terms["metrics"]
  assert float(m["accuracy"]) == pytest.approx(correct.mean())
  for k in range(4):
    assert float(m[f"accuracy_t{k}"]) == pytest.approx(correct[np.arange(8) % 4 == k].mean())


@pytest.fixture(scope="module")
def trained_classifier(tmp_path_factory):
  """configs/mnist/classifier16.py:tiny trained for 2 steps by the training loop."""
  root = tmp_path_factory.mktemp("clf")
  c = cascade_config.load_stage_config("configs/mnist/classifier16.py", "tiny")
  c.unlock()
  c.data.data_dir = str(root / "tfds")
  c.lock()
  state = train.train_and_evaluate(c, str(root / "classifier"))
  return c, str(root / "classifier"), state, root


def test_classifier_trains_with_the_stage_loop(trained_classifier):
  c, workdir, state, _ = trained_classifier
  assert int(state.step) == 2
  params, step = checkpointing.load_params(workdir, c, use_ema=False)
  assert step == 2 and "out_2" in params and "label_emb" not in params
  import glob  # pylint: disable=import-outside-toplevel
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=import-outside-toplevel
  ev = event_accumulator.EventAccumulator(glob.glob(f"{workdir}/events.out.tfevents.*")[0])
  ev.Reload()
  tags = set(ev.Tags()["tensors"]) | set(ev.Tags()["scalars"])
  assert {"loss", "accuracy", "accuracy_t0", "accuracy_t3"} <= tags, tags
  assert "mse" not in tags


def test_guided_cascade_samples_with_the_trained_classifier(trained_classifier):
  """Tiny MNIST base stage + classifier: classifier_scale > 0 changes the samples, 0 does not."""
  c, workdir, _, root = trained_classifier
  casc_cfg = cascade_config.load_stage_config("configs/cascades/mnist_guided.py", "tiny")
  casc_cfg.order = ("base",)
  base = casc_cfg.stages.base
  base.classifier_checkpoint = workdir
  base.num_steps = 2  # XLA:CPU runs the classifier's input gradient slowly; 2 steps show the effect
  base_cfg = base.config
  model, _, tx = train.build(base_cfg)
  state = jax.jit(functools.partial(train.init_state, base_cfg, model, tx))(jax.random.PRNGKey(0))
  # A base model whose eps output is not zero (init zeroes the head), so the chain depends on x_t.
  params = jax.tree.map(lambda p: p + 0.01, state.params)
  labels = np.arange(8, dtype=np.int32) % 10

  def run(scale):
    base.classifier_scale = scale
    casc = cascade.Cascade(casc_cfg, params={"base": params})
    return cascade.run_cascade(casc, labels, batch_size=8, seed=0, progress=False)["base"]

  plain, guided = run(0.0), run(50.0)
  assert guided.shape == (8, 16, 16, 1) and guided.dtype == np.uint8
  assert not np.array_equal(guided, plain)
  base.classifier_scale = 0.0
  assert "base" not in cascade.Cascade(casc_cfg, params={"base": params}).classifier_params
