"""Tests of cdm.evaluation: Frechet distance, IS, Inception (structure and weight loading),
classifier, CAS, precision / recall and evaluate_samples."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from cdm.evaluation import cas
from cdm.evaluation import classifier
from cdm.evaluation import frechet
from cdm.evaluation import inception
from cdm.evaluation import inception_score
from cdm.evaluation import pipeline
from cdm.evaluation import precision_recall


def _random_cov(rng, d, rank=None):
  a = rng.normal(size=(d, rank or 2 * d))
  return a @ a.T / a.shape[1]


# ------------------------------------------------------------------------------------------ Frechet


def test_compute_statistics_matches_numpy():
  f = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
  mu, sigma = frechet.compute_statistics(f)
  assert mu.dtype == np.float64 and sigma.dtype == np.float64 and sigma.shape == (4, 4)
  np.testing.assert_allclose(mu, f.astype(np.float64).mean(0), rtol=1e-12)
  centred = f.astype(np.float64) - mu
  np.testing.assert_allclose(sigma, centred.T @ centred / 49, rtol=1e-10)  # Sample covariance.
  mu1, s1 = frechet.compute_statistics(f[:, :1])
  assert mu1.shape == (1,) and s1.shape == (1, 1)
  with pytest.raises(ValueError):
    frechet.compute_statistics(f[:1])


@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
def test_frechet_1d_closed_form(method):
  # Univariate Gaussians: (m1 - m2)^2 + (s1 - s2)^2.
  d = frechet.frechet_distance([1.0], [[4.0]], [-0.5], [[0.25]], method=method)
  assert d == pytest.approx(1.5 ** 2 + (2.0 - 0.5) ** 2, rel=1e-12)


@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
def test_frechet_matches_direct_scipy_and_diagonal_closed_form(method):
  rng = np.random.default_rng(1)
  d = 24
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  s1, s2 = _random_cov(rng, d), _random_cov(rng, d)
  direct = (np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
            - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2).real))
  assert frechet.frechet_distance(mu1, s1, mu2, s2, method=method) == pytest.approx(direct, rel=1e-9)
  # Diagonal covariances: sum_i (sqrt(a_i) - sqrt(b_i))^2 + ||mu1 - mu2||^2.
  a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
  closed = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  got = frechet.frechet_distance(mu1, np.diag(a), mu2, np.diag(b), method=method)
  assert got == pytest.approx(closed, rel=1e-10)


def test_frechet_identical_and_singular():
  rng = np.random.default_rng(2)
  f = rng.normal(size=(200, 16))
  mu, s = frechet.compute_statistics(f)
  assert abs(frechet.trace_sqrt_product(s, s) - np.trace(s)) < 1e-9 * np.trace(s)
  for method in ("eigh", "sqrtm"):
    assert frechet.frechet_distance(mu, s, mu, s, method=method) < 1e-8
  assert frechet.fid_from_features(f, f) < 1e-8
  # Fewer samples than dimensions: singular covariances; both methods agree and stay finite.
  g1, g2 = rng.normal(size=(10, 32)), rng.normal(size=(10, 32)) + 0.3
  e = frechet.fid_from_features(g1, g2, method="eigh")
  q = frechet.fid_from_features(g1, g2, method="sqrtm")
  assert np.isfinite(e) and e == pytest.approx(q, rel=1e-4)
  with pytest.raises(ValueError):
    frechet.frechet_distance(mu, s, mu, s * np.nan)


def test_statistics_roundtrip(tmp_path):
  rng = np.random.default_rng(3)
  mu, s = rng.normal(size=3), _random_cov(rng, 3)
  frechet.save_statistics(tmp_path / "stats.npz", mu, s)
  mu2, s2 = frechet.load_statistics(tmp_path / "stats.npz")
  np.testing.assert_array_equal(mu, mu2)
  np.testing.assert_array_equal(s, s2)


# ------------------------------------------------------------------------------------------ IS


def test_inception_score_closed_forms():
  # Uniform predictions: p(y|x) = p(y), KL = 0, IS = 1.
  m, s = inception_score.inception_score(np.zeros((100, 7)))
  assert m == pytest.approx(1.0, abs=1e-12) and s == pytest.approx(0.0, abs=1e-12)
  # Confident predictions spread evenly over K classes in every split: IS = K.
  k, n = 5, 200
  probs = np.eye(k)[np.arange(n) % k]
  m, s = inception_score.inception_score(probs=probs, num_splits=10)
  assert m == pytest.approx(k, rel=1e-12) and s == pytest.approx(0.0, abs=1e-9)
  # The same through (large) logits.
  m, _ = inception_score.inception_score(60.0 * probs)
  assert m == pytest.approx(k, rel=1e-6)
  # All samples on one class: IS = 1.
  m, _ = inception_score.inception_score(probs=np.eye(k)[np.zeros(n, int)])
  assert m == pytest.approx(1.0)
  with pytest.raises(ValueError):
    inception_score.inception_score(np.zeros((5, 3)), num_splits=10)


# ------------------------------------------------------------------------------------------ Inception


def test_inception_spec_matches_state_dict_layout():
  shapes = inception.state_dict_shapes()
  assert len(shapes) == 94 * 5 + 2  # 94 BasicConv2d (conv + 4 BN tensors), fc weight and bias.
  assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
  assert shapes["Mixed_6b.branch7x7_2.conv.weight"] == (128, 128, 1, 7)
  assert shapes["Mixed_7c.branch3x3dbl_1.conv.weight"] == (448, 2048, 1, 1)
  assert shapes["Mixed_7c.branch_pool.bn.running_var"] == (192,)
  assert shapes["fc.weight"] == (1008, 2048)


def test_avg_pool_excludes_padding_and_resize_matches_torch_bilinear():
  # count_include_pad=False: a constant map stays constant at the borders.
  x = jnp.ones((1, 5, 5, 2))
  np.testing.assert_allclose(inception._avg_pool_3x3(x), 1.0, rtol=1e-6)

  def torch_bilinear_1d(n_in, n_out):  # F.interpolate(mode="bilinear", align_corners=False)
    src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w = np.zeros((n_out, n_in))
    w[np.arange(n_out), i0] += 1 - (src - i0)
    w[np.arange(n_out), i1] += src - i0
    return w

  rng = np.random.default_rng(0)
  for n_in in (32, 400):  # Up- and down-sampling (no antialiasing).
    img = rng.uniform(-1, 1, (1, n_in, n_in, 3)).astype(np.float32)
    w = torch_bilinear_1d(n_in, 299)
    ref = np.einsum("ph,bhwc,qw->bpqc", w, img.astype(np.float64), w, optimize=True)
    # float32 sample positions: 1e-4 is ~1 % of one uint8 step (2 / 255).
    np.testing.assert_allclose(inception.resize(jnp.asarray(img)), ref, atol=1e-4)


@pytest.fixture(scope="module")
def fake_weights(tmp_path_factory):
  """A random state_dict with the real keys and shapes (plus an ignored num_batches_tracked), its
  .npz path, and the params loaded from it."""
  sd = inception.random_state_dict(0)
  path = tmp_path_factory.mktemp("inception") / "fake_inception.npz"
  np.savez(path, **sd, **{"Conv2d_1a_3x3.bn.num_batches_tracked": np.array(7)})
  return sd, str(path), inception.load_params(str(path))


def test_inception_weight_loader(fake_weights, tmp_path):
  sd, path, params = fake_weights
  # Conv: OIHW -> HWIO with BatchNorm (eps 1e-3) folded into kernel and bias.
  w = sd["Mixed_6b.branch7x7_2.conv.weight"]  # (128, 128, 1, 7)
  g = sd["Mixed_6b.branch7x7_2.bn.weight"] / np.sqrt(sd["Mixed_6b.branch7x7_2.bn.running_var"] + 1e-3)
  p = params["Mixed_6b"]["branch7x7_2"]
  assert p["kernel"].shape == (1, 7, 128, 128) and p["kernel"].dtype == np.float32
  np.testing.assert_allclose(p["kernel"][0, 3, 5, 9], w[9, 5, 0, 3] * g[9], rtol=1e-5)
  np.testing.assert_allclose(
      p["bias"], sd["Mixed_6b.branch7x7_2.bn.bias"] - sd["Mixed_6b.branch7x7_2.bn.running_mean"] * g,
      rtol=1e-5, atol=1e-7)
  assert params["Conv2d_1a_3x3"]["kernel"].shape == (3, 3, 3, 32)
  np.testing.assert_array_equal(params["fc"]["kernel"], sd["fc.weight"].T)
  # The param tree is exactly the Flax module's.
  shapes = jax.eval_shape(inception.InceptionV3(resize_input=False).init, jax.random.PRNGKey(0),
                          jnp.zeros((1, 75, 75, 3)))["params"]
  assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(params)
  assert all(a.shape == b.shape for a, b in zip(jax.tree_util.tree_leaves(shapes),
                                                jax.tree_util.tree_leaves(params)))
  # Missing / unexpected / mis-shaped keys are clear errors.
  bad = dict(sd)
  del bad["Mixed_7c.branch_pool.bn.running_mean"]
  with pytest.raises(KeyError, match="missing 1 keys.*Mixed_7c.branch_pool.bn.running_mean"):
    inception.convert_state_dict(bad)
  with pytest.raises(KeyError, match="unexpected 1 keys.*AuxLogits"):
    inception.convert_state_dict({**sd, "AuxLogits.fc.weight": np.zeros(1)})
  with pytest.raises(ValueError, match=r"fc.weight: got \(1000, 2048\)"):
    inception.convert_state_dict({**sd, "fc.weight": np.zeros((1000, 2048), np.float32)})
  with pytest.raises(FileNotFoundError, match="pytorch-fid"):
    inception.load_params(str(tmp_path / "absent.npz"))
  # The conversion CLI (an .npz input needs no torch) writes the same state_dict.
  inception.main([f"--convert={path}", f"--out={tmp_path / 'out.npz'}"])
  with np.load(tmp_path / "out.npz") as f:
    assert set(f.files) == set(sd)
    np.testing.assert_array_equal(f["Mixed_5b.branch_pool.conv.weight"],
                                  sd["Mixed_5b.branch_pool.conv.weight"])


def test_inception_forward_shapes(fake_weights):
  fn = inception.make_feature_fn(fake_weights[2], resize_input=False, spatial=True)
  images = np.random.default_rng(0).integers(0, 256, (2, 75, 75, 1), dtype=np.uint8)
  start = time.time()
  out = jax.block_until_ready(fn(images))  # ~10 s on 2 CPU cores, almost all compilation.
  print(f"Inception forward (compile + run), batch 2 at 75 px: {time.time() - start:.1f} s")
  assert out["features"].shape == (2, 2048) and out["features"].dtype == jnp.float32
  assert out["logits"].shape == (2, 1008) and out["logits"].dtype == jnp.float32
  # sFID features: the first 7 channels of Mixed_6d.branch1x1 (TF mixed_6/conv), (H, W, C) order;
  # Mixed_6d is 3x3 at 75 px (17x17 -> 2023 features at 299 px). Read here from the sub-module's own
  # captured output, not from the concatenation the model slices.
  model = inception.InceptionV3(resize_input=False)
  _, inter = jax.jit(lambda p, x: model.apply(
      {"params": p}, x, capture_intermediates=lambda mdl, _: mdl.name == "branch1x1"))(
          jax.tree_util.tree_map(jnp.asarray, fake_weights[2]), inception.preprocess(images))
  b1 = np.asarray(inter["intermediates"]["Mixed_6d"]["branch1x1"]["__call__"][0])
  assert b1.shape == (2, 3, 3, 192)
  assert out["spatial_features"].shape == (2, 3 * 3 * 7)
  np.testing.assert_allclose(out["spatial_features"], b1[..., :7].reshape(2, -1), rtol=1e-5,
                             atol=1e-6)
  assert "spatial_features" not in inception.make_feature_fn(fake_weights[2])(images[:, :8, :8])
  assert np.isfinite(out["features"]).all() and np.isfinite(out["logits"]).all()
  assert (np.asarray(out["features"]) >= 0).all()  # Mean of ReLU outputs.
  with pytest.raises(ValueError, match="smaller than 75"):
    jax.eval_shape(inception.InceptionV3(resize_input=False).init, jax.random.PRNGKey(0),
                   jnp.zeros((1, 32, 32, 3)))


def test_inception_reads_pth_with_torch(fake_weights, tmp_path):
  torch = pytest.importorskip("torch")
  sd = {k: v for k, v in fake_weights[0].items() if k.startswith("Mixed_7c.branch_pool")}
  pth = tmp_path / "fake.pth"
  torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, pth)
  got = inception.read_state_dict(str(pth))
  assert set(got) == set(sd)
  for k in sd:
    np.testing.assert_array_equal(got[k], sd[k])


# ------------------------------------------------------------------------------------------ classifier / CAS


def _squares(n, seed, num_classes=10, size=16):
  """Class k: a bright 3x3 square at grid position k on a noisy dark background."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_classes, n)
  images = rng.integers(0, 60, (n, size, size, 1)).astype(np.uint8)
  for i, k in enumerate(labels):
    r, c = (k // 4) * 5 + 1, (k % 4) * 4
    images[i, r:r + 3, c:c + 3] = 255
  return images, labels.astype(np.int32)


TRAIN = dict(steps=80, batch_size=32, lr=3e-3, width=8)


def test_cas_separable_dataset():
  gen_x, gen_y = _squares(640, 0)
  test_x, test_y = _squares(300, 1)
  real_x, real_y = _squares(640, 2)
  res = cas.classification_accuracy_score(gen_x, gen_y, test_x, test_y, 10, real_train_images=real_x,
                                          real_train_labels=real_y, **TRAIN)
  assert res["cas_top1"] > 0.95 and res["cas_top5"] > 0.99, res
  assert res["real_top1"] > 0.95, res
  shuffled = np.random.default_rng(3).permutation(gen_y)
  res = cas.classification_accuracy_score(gen_x, shuffled, test_x, test_y, 10, **TRAIN)
  assert res["cas_top1"] < 0.3 and res["cas_top5"] < 0.8, res  # Chance: 0.1 / 0.5.
  assert set(res) == {"cas_top1", "cas_top5"}


def test_topk_accuracy():
  logits = np.array([[0.1, 0.9, 0.0], [0.8, 0.05, 0.15], [0.2, 0.3, 0.5]])
  labels = np.array([1, 2, 0])
  assert cas.topk_accuracy(logits, labels, 1) == pytest.approx(1 / 3)
  assert cas.topk_accuracy(logits, labels, 2) == pytest.approx(2 / 3)
  assert cas.topk_accuracy(logits, labels, 5) == 1.0  # k capped at the class count.


def test_classifier_features_and_cache(tmp_path):
  x, y = _squares(32, 4)
  path = str(tmp_path / "wd" / "classifier.npz")
  params, apply_fn = classifier.train_or_load_classifier(path, x, y, 10, **{**TRAIN, "steps": 3})
  feats = classifier.features(apply_fn, params, x, batch_size=20)  # Padded last batch.
  logits = classifier.predict_logits(apply_fn, params, x, batch_size=20)
  assert feats.shape == (32, 128) and logits.shape == (32, 10)
  np.testing.assert_allclose(logits, np.asarray(apply_fn(params, x)[0]), rtol=1e-5, atol=1e-5)
  params2, apply_fn2 = classifier.train_or_load_classifier(path, x, y, 10, steps=10 ** 9)  # Cached.
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(params2)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(classifier.features(apply_fn2, params2, x, batch_size=20), feats,
                             rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="cached classifier"):
    classifier.train_or_load_classifier(path, x, y, 7)


# ------------------------------------------------------------------------------ precision / recall


def test_precision_recall_gaussians():
  rng = np.random.default_rng(0)
  real = rng.normal(size=(600, 8))
  same = precision_recall.precision_recall(real, rng.normal(size=(600, 8)), row_batch=300)
  assert same["precision"] > 0.6 and same["recall"] > 0.6, same
  far = precision_recall.precision_recall(real, rng.normal(size=(600, 8)) + 6.0)
  assert far["precision"] < 0.02 and far["recall"] < 0.02, far
  collapsed = precision_recall.precision_recall(real, 0.2 * rng.normal(size=(600, 8)))
  assert collapsed["precision"] > 0.95 and collapsed["recall"] < 0.2, collapsed
  # Radii: the k-th neighbour excludes the point itself.
  pts = np.array([[0.0], [1.0], [3.0], [7.0]])
  np.testing.assert_allclose(precision_recall.manifold_radii(pts, k=1), [1, 1, 4, 16])


# ------------------------------------------------------------------------------------------ evaluate_samples


def _toy_feature_fn():
  @jax.jit
  def fn(images):
    x = images.astype(jnp.float32).reshape(images.shape[0], -1) / 255.0
    return {"features": x[:, :32], "logits": 10.0 * x[:, :10]}
  return fn


def test_extract_features_padding_and_sharding():
  x = np.random.default_rng(0).integers(0, 256, (21, 8, 8, 1), dtype=np.uint8)
  fn = _toy_feature_fn()
  full = pipeline.extract_features(fn, x, batch_size=32)
  part = pipeline.extract_features(fn, x, batch_size=8)
  sharded = pipeline.extract_features(fn, x, batch_size=8, shard=True)
  assert full["features"].shape == (21, 32) and full["logits"].shape == (21, 10)
  for out in (part, sharded):
    np.testing.assert_allclose(out["features"], full["features"], rtol=1e-6)
  tup = pipeline.extract_features(lambda b: (fn(b)["features"], fn(b)["logits"]), x, batch_size=8)
  np.testing.assert_allclose(tup["logits"], full["logits"], rtol=1e-6)


def test_evaluate_samples():
  rng = np.random.default_rng(0)
  real = rng.integers(0, 256, (300, 8, 8, 1), dtype=np.uint8)
  labels = rng.integers(0, 10, 300)
  fn = _toy_feature_fn()
  same = pipeline.evaluate_samples(real, labels, real, labels, fn, batch_size=64, label_accuracy=True)
  assert same["fid"] < 1e-6 and same["precision"] == 1.0 and same["recall"] == 1.0
  assert same["num_samples"] == 300 and same["is_mean"] >= 1.0
  assert same["accuracy"] == same["real_accuracy"]
  real_feats = pipeline.extract_features(fn, real, batch_size=64)
  dark = (real // 4).astype(np.uint8)
  worse = pipeline.evaluate_samples(dark, None, None, None, fn, batch_size=64,
                                    real_features=real_feats, pr_max_samples=100)
  assert worse["fid"] > 1.0 and worse["precision"] < 0.5
  assert "accuracy" not in worse and "sfid" not in worse
  # sFID: the Frechet distance of the "spatial_features", whenever the feature function has them.
  def with_spatial(b):
    return {**fn(b), "spatial_features": fn(b)["features"][:, ::-1] * 2.0}
  both = pipeline.evaluate_samples(dark, None, real, None, with_spatial, batch_size=64,
                                   precision_recall=False)
  gs = pipeline.extract_features(with_spatial, dark, batch_size=64)["spatial_features"]
  rs = pipeline.extract_features(with_spatial, real, batch_size=64)["spatial_features"]
  want = frechet.frechet_distance(*frechet.compute_statistics(gs), *frechet.compute_statistics(rs))
  np.testing.assert_allclose(both["sfid"], want, rtol=1e-9)
  np.testing.assert_allclose(both["sfid"], 4.0 * both["fid"], rtol=1e-6)  # permuted, scaled by 2


def test_sfid_needs_inception_features(tmp_path):
  from cdm import cascade_config, evaluate  # pylint: disable=g-import-not-at-top
  stage = cascade_config.load_stage_config("configs/mnist/sr16_32.py", "tiny")
  ev = cascade_config.eval_defaults()
  ev.sfid = True
  with pytest.raises(ValueError, match="features=inception"):
    evaluate.Evaluator(stage, ev, str(tmp_path))
