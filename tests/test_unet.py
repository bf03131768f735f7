"""Tests of the ADM U-Net: reference parity, shapes/dtypes, conditioning paths, config errors."""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdm import config_base
from cdm.models import convert
from cdm.models import layers
from cdm.models import unet as unet_lib

TINY_COND_ARGS = dict(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2",
                      learn_sigma=True, class_cond=True, attention_resolutions="8", num_heads=4,
                      num_head_channels=16, num_heads_upsample=-1, use_scale_shift_norm=True,
                      dropout=0.0, resblock_updown=True, use_fp16=False,
                      use_new_attention_order=True)


# ---------------------------------------------------------------------- helpers
def tiny_config(**overrides):
  """A small stage config (8 px, ch 32, 2 levels); overrides are 'section.field' = value."""
  c = config_base.stage_config()
  c.data.image_size, c.data.channels, c.data.num_classes = 8, 3, 10
  c.model.model_channels, c.model.channel_mult, c.model.num_res_blocks = 32, (1, 2), 1
  c.model.attention_resolutions, c.model.num_head_channels = (4,), 16
  for k, v in overrides.items():
    sec, field = k.split(".")
    c[sec][field] = v
  return c


def randomized(params, scale=0.2, seed=0):
  """Random float32 params shaped like ``params`` (arrays or ShapeDtypeStructs).

  Drawn with numpy: compiling jax.random for ~100 leaves costs minutes on a small CPU. Random values
  also make the zero-initialised convs of a fresh init non-trivial.
  """
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda x: jnp.asarray(scale * rng.standard_normal(x.shape), jnp.float32), params)


def inputs(model, batch=2, seed=1):
  """Random inputs matching ``model``'s conditioning (numpy: no eager jax.random compiles)."""
  rng = np.random.default_rng(seed)
  s, c = model.image_size, model.in_channels
  kw = dict(x=rng.uniform(-1, 1, (batch, s, s, c)).astype(np.float32),
            t=np.array([3.0, 517.0][:batch], np.float32))
  if model.num_classes is not None:
    kw["y"] = np.arange(batch, dtype=np.int32) % model.num_classes
  if model.is_super_resolution:
    r = model.low_res_size
    kw["low_res"] = rng.uniform(-1, 1, (batch, r, r, c)).astype(np.float32)
  if model.aug_level_embedding:
    kw["aug_level"] = np.array([0.0, 250.0][:batch], np.float32)
  return kw


def build(config, seed=0):
  """Model and random params (shapes from eval_shape: no init compile)."""
  model = unet_lib.create_model(config)
  return model, randomized(unet_lib.abstract_params(model), seed=seed)


def apply_fn(model):
  return jax.jit(lambda p, kw: model.apply({"params": p}, **kw))


def out_shape(config):
  """Output ShapeDtypeStruct of a config's model via eval_shape (nothing compiled)."""
  model = unet_lib.create_model(config)
  params = unet_lib.abstract_params(model)
  return jax.eval_shape(lambda p, kw: model.apply({"params": p}, **kw), params,
                        unet_lib.dummy_inputs(model, batch=2))


# ---------------------------------------------------------------------- reference parity
@pytest.fixture(scope="module")
def reference(shared_dir):
  """The tiny_cond golden: inputs/outputs (NCHW) and its torch state_dict."""
  path = shared_dir / "specs" / "adm_tiny_cond.npz"
  with np.load(path) as z:
    ref = {k[len("tiny_cond/"):]: z[k] for k in z.files if not k.startswith("tiny_cond/param/")}
  return ref, convert.load_state_dict(path, prefix="tiny_cond/param/")


def _nhwc(a):
  return np.asarray(a).transpose(0, 2, 3, 1)


def _rel_err(got, want):
  return float(np.abs(np.asarray(got) - want).max() / np.abs(want).max())


@functools.lru_cache(maxsize=None)
def _tiny_cond(new_order: bool, dtype: str = "float32"):
  """tiny_cond model and a compiled forward returning (out, intermediates)."""
  config = convert.model_config_from_guided_diffusion(
      dict(TINY_COND_ARGS, use_new_attention_order=new_order), num_classes=10)
  config.model.dtype = dtype
  model = unet_lib.create_model(config)
  fn = jax.jit(lambda p, x, t, y: model.apply({"params": p}, x, t, y=y,
                                              mutable=["intermediates"]))
  return config, model, fn


def _run_reference(ref, fn, params, y=None):
  out, state = fn(params, _nhwc(ref["x"]), ref["t"].astype(np.float32),
                  ref["y"] if y is None else y)
  return out, state["intermediates"]


def test_timestep_embedding_matches_reference(reference):
  ref, _ = reference
  emb = layers.timestep_embedding(jnp.asarray(ref["t"], jnp.float32), 32)
  np.testing.assert_allclose(emb, ref["t_sinusoid"], atol=2e-6, rtol=0)


@pytest.mark.parametrize("new_order,key", [(True, "out"), (False, "out_legacy_attn")])
def test_forward_parity_tiny_cond(reference, new_order, key):
  """cdm reproduces guided-diffusion's forward pass (float32) for both qkv layouts."""
  ref, state_dict = reference
  config, _, fn = _tiny_cond(new_order)
  params = convert.convert_guided_diffusion(state_dict, config)
  out, inter = _run_reference(ref, fn, params)
  assert out.dtype == jnp.float32 and out.shape == (2, 16, 16, 6)
  err = _rel_err(out, _nhwc(ref[key]))
  assert err < 1e-4, f"relative error {err:.2e}"
  if new_order:  # per-block activations, to locate a divergence
    np.testing.assert_allclose(inter["emb"][0], ref["emb"], atol=1e-5, rtol=0)
    for name in [k for k in ref if k.startswith("act/")]:
      got = inter[name[4:].replace(".", "_")][0]
      assert _rel_err(got, _nhwc(ref[name])) < 1e-4, name


def test_legacy_checkpoint_runs_in_new_order_model(reference):
  """source_new_attention_order=False permutes qkv rows: the new-order model gives the legacy out."""
  ref, state_dict = reference
  config, _, fn = _tiny_cond(True)
  params = convert.convert_guided_diffusion(state_dict, config, source_new_attention_order=False)
  out, _ = _run_reference(ref, fn, params)
  assert _rel_err(out, _nhwc(ref["out_legacy_attn"])) < 1e-4


def test_class_label_changes_output(reference):
  ref, state_dict = reference
  config, model, fn = _tiny_cond(True)
  params = convert.convert_guided_diffusion(state_dict, config)
  out, _ = _run_reference(ref, fn, params, y=(ref["y"] + 1) % 10)
  assert _rel_err(out, _nhwc(ref["out"])) > 1e-3
  with pytest.raises(ValueError, match="class_conditional"):
    model.apply({"params": params}, _nhwc(ref["x"]), ref["t"])


# ---------------------------------------------------------------------- shapes and dtypes
@pytest.mark.parametrize("overrides,shape", [
    ({"model.learn_sigma": False, "data.channels": 1, "model.class_conditional": False},
     (2, 8, 8, 1)),
    ({"data.low_res_size": 4, "model.low_res_upsample": "bicubic", "model.remat": True,
      "model.dtype": "bfloat16", "train.class_dropout_prob": 0.1}, (2, 8, 8, 6)),
])
def test_output_shapes(overrides, shape):
  out = out_shape(tiny_config(**overrides))
  assert out.shape == shape and out.dtype == jnp.float32


def test_default_stage_config_builds():
  """The config_base defaults (1 channel, 16 px, base stage) give a valid model."""
  c = config_base.stage_config()
  assert out_shape(c).shape == (2, 16, 16, 2 * c.data.channels)


def test_param_naming_and_null_class():
  params = unet_lib.abstract_params(tiny_config(**{"train.class_dropout_prob": 0.1}))
  assert {"time_embed_0", "time_embed_2", "label_emb", "input_blocks_0_0", "input_blocks_3_1",
          "middle_block_0", "middle_block_1", "middle_block_2", "output_blocks_1_2", "out_0",
          "out_2"} <= set(params)
  assert set(params["input_blocks_1_0"]) == {"in_norm", "in_conv", "emb_proj", "out_norm",
                                             "out_conv"}
  assert set(params["input_blocks_3_1"]) == {"norm", "qkv", "proj_out"}
  assert params["label_emb"]["embedding"].shape == (11, 128)  # null class id 10 = num_classes
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(
      unet_lib.abstract_params(tiny_config(**{"model.dtype": "bfloat16"}))))


def test_conv_resampling_variant():
  """resblock_updown=False uses guided-diffusion's Downsample (op) / Upsample (conv)."""
  config = tiny_config(**{"model.resblock_updown": False, "model.use_scale_shift_norm": False})
  params = unet_lib.abstract_params(config)
  assert set(params["input_blocks_2_0"]) == {"op"} and set(params["output_blocks_1_2"]) == {"conv"}
  assert params["input_blocks_1_0"]["emb_proj"]["kernel"].shape == (128, 32)
  assert out_shape(config).shape == (2, 8, 8, 6)


# ---------------------------------------------------------------------- SR model: conditioning,
#                                                                         bfloat16, remat, dropout
SR_OVERRIDES = {"data.low_res_size": 4, "model.aug_level_embedding": True,
                "model.use_new_attention_order": False, "model.channel_mult": (1,),
                "model.attention_resolutions": (8,)}


@pytest.fixture(scope="module")
def sr_model():
  model, params = build(tiny_config(**SR_OVERRIDES))
  fn = apply_fn(model)
  kw = inputs(model)
  return model, params, fn, kw, fn(params, kw)


def test_super_resolution_conditioning(sr_model):
  model, params, fn, kw, base = sr_model
  assert base.shape == (2, 8, 8, 6)
  assert "aug_embed_0" in params and params["input_blocks_0_0"]["kernel"].shape == (3, 3, 6, 32)
  assert float(jnp.abs(base - fn(params, dict(kw, low_res=-kw["low_res"]))).max()) > 1e-3
  assert float(jnp.abs(base - fn(params, dict(kw, aug_level=kw["aug_level"] + 100))).max()) > 1e-3
  drop = lambda name: {k: v for k, v in kw.items() if k != name}
  with pytest.raises(ValueError, match="low_res is required"):
    model.apply({"params": params}, **drop("low_res"))
  with pytest.raises(ValueError, match="aug_level is required"):
    model.apply({"params": params}, **drop("aug_level"))
  with pytest.raises(ValueError, match="data.low_res_size"):
    model.apply({"params": params}, **dict(kw, low_res=np.zeros((2, 2, 2, 3), np.float32)))
  no_aug = unet_lib.create_model(tiny_config(**dict(SR_OVERRIDES,
                                                    **{"model.aug_level_embedding": False})))
  with pytest.raises(ValueError, match="aug_level_embedding = False"):
    no_aug.apply({"params": params}, **kw)


def test_bfloat16_compute_float32_output(sr_model):
  _, params, _, kw, base = sr_model
  model = unet_lib.create_model(tiny_config(**dict(SR_OVERRIDES, **{"model.dtype": "bfloat16"})))
  assert model.dtype == jnp.bfloat16
  out = apply_fn(model)(params, kw)
  assert out.dtype == jnp.float32  # the head runs in float32
  assert _rel_err(out, np.asarray(base)) < 0.05


def test_remat_same_output(sr_model):
  """remat=True wraps the blocks in jax.checkpoint and leaves the output unchanged."""
  model, params, _, kw, base = sr_model
  remat = model.clone(remat=True)
  np.testing.assert_allclose(apply_fn(remat)(params, kw), base, rtol=1e-5, atol=1e-6)
  jaxpr = str(jax.make_jaxpr(lambda p: remat.apply({"params": p}, **kw))(params))
  assert "remat" in jaxpr  # checkpointed regions, recomputed in the backward pass


def test_dropout_only_in_training():
  block = layers.ResBlock(32, dropout=0.5, deterministic=False)
  x = np.random.default_rng(0).standard_normal((1, 4, 4, 32)).astype(np.float32)
  emb = np.ones((1, 8), np.float32)
  rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
  p = randomized(jax.eval_shape(block.init, rngs, x, emb)["params"])
  train = jax.jit(lambda p: block.apply({"params": p}, x, emb,
                                        rngs={"dropout": jax.random.key(2)}))(p)
  evaluate = jax.jit(lambda p: block.clone(deterministic=True).apply({"params": p}, x, emb))(p)
  assert float(jnp.abs(train - evaluate).max()) > 1e-3


def _torch_bilinear_reference(a, size):
  """numpy F.interpolate(mode='bilinear', align_corners=False) for NHWC upsampling."""
  def weights(n_in, n_out):
    src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, None)
    lo = np.minimum(np.floor(src).astype(int), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] += 1 - (src - lo)
    m[np.arange(n_out), hi] += src - lo
    return m
  wh, ww = weights(a.shape[1], size), weights(a.shape[2], size)
  return np.einsum("ih,jw,bhwc->bijc", wh, ww, a)


def test_low_res_upsampling_is_torch_bilinear():
  model = unet_lib.create_model(tiny_config(**{"data.low_res_size": 2}))
  a = np.random.default_rng(0).uniform(-1, 1, (2, 2, 2, 3)).astype(np.float32)
  up = jax.jit(model._upsample_low_res)(a)  # pylint: disable=protected-access
  np.testing.assert_allclose(up, _torch_bilinear_reference(a, 8), atol=1e-6)


# ---------------------------------------------------------------------- attention
def _group_norm_ref(x, p):
  """GroupNorm32 (eps 1e-5, biased variance, contiguous groups) written out."""
  b, hh, ww, c = x.shape
  g = x.reshape(b, hh, ww, 32, c // 32)
  mean = g.mean(axis=(1, 2, 4), keepdims=True)
  var = g.var(axis=(1, 2, 4), keepdims=True)
  return ((g - mean) / jnp.sqrt(var + 1e-5)).reshape(x.shape) * p["scale"] + p["bias"]


@jax.jit
def _attention_ref(params, x):
  """Legacy-order multi-head attention block as a plain einsum softmax (2 heads of 64)."""
  h = _group_norm_ref(x, params["norm"]).reshape(1, 1024, 128)
  qkv = (h @ params["qkv"]["kernel"] + params["qkv"]["bias"]).reshape(1, 1024, 2, 3, 64)
  q, k, v = qkv[..., 0, :], qkv[..., 1, :], qkv[..., 2, :]  # legacy: per-head [q k v]
  w = jax.nn.softmax(jnp.einsum("bthd,bshd->bhts", q, k) / 8.0, axis=-1)
  a = jnp.einsum("bhts,bshd->bthd", w, v).reshape(1, 1024, 128)
  return x + (a @ params["proj_out"]["kernel"] + params["proj_out"]["bias"]).reshape(x.shape)


def test_attention_32x32_tokens_64_channel_heads():
  """1024 tokens with 64-channel heads: matches a plain einsum softmax; bfloat16 works."""
  block = layers.AttentionBlock(num_head_channels=64, use_new_attention_order=False)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 32, 32, 128)), jnp.float32)
  params = randomized(jax.eval_shape(block.init, jax.random.key(1), x)["params"], scale=0.1)
  ref = _attention_ref(params, x)
  out = jax.jit(lambda p, x: block.apply({"params": p}, x))(params, x)
  np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)
  bf16 = block.clone(dtype=jnp.bfloat16)
  out16 = jax.jit(lambda p, x: bf16.apply({"params": p}, x))(params, x.astype(jnp.bfloat16))
  assert out16.dtype == jnp.bfloat16
  np.testing.assert_allclose(out16.astype(jnp.float32), ref, atol=0.1)


# ---------------------------------------------------------------------- config errors
@pytest.mark.parametrize("overrides,field", [
    ({"model.model_channels": 48}, "model.model_channels"),
    ({"model.channel_mult": (1, 1.5)}, "model.channel_mult"),
    ({"data.image_size": 12, "model.channel_mult": (1, 1, 1, 1)}, "data.image_size"),
    ({"data.low_res_size": 3}, "data.low_res_size"),
    ({"model.aug_level_embedding": True}, "model.aug_level_embedding"),
    ({"model.low_res_upsample": "area", "data.low_res_size": 4}, "model.low_res_upsample"),
    ({"model.num_head_channels": 24}, "model.num_head_channels"),
    ({"model.num_head_channels": -1, "model.num_heads": 3}, "model.num_heads"),
    ({"model.num_head_channels": -1, "model.num_heads_upsample": 5}, "model.num_heads_upsample"),
])
def test_config_errors_name_the_field(overrides, field):
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    unet_lib.create_model(tiny_config(**overrides))


def test_unreachable_attention_resolution_warns():
  model = unet_lib.create_model(tiny_config(**{"model.attention_resolutions": (4, 2, 3)}))
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    assert model.attention_ds() == frozenset({2})
  messages = " ".join(str(w.message) for w in caught)
  assert "2 px" in messages and "3 px" in messages
