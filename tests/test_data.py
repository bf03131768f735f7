"""Tests of cdm.data: offline cdm_mnist, mocked TFDS datasets, image folders; never downloads."""

import json
from unittest import mock

import numpy as np
import pytest
import tensorflow_datasets as tfds

from cdm import config_base
from cdm import data as cdata
from cdm.data import bench
from cdm.data import mnist_builder
from cdm.data import prepare


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory):
  """A tmp TFDS data_dir with cdm_mnist prepared once for the session."""
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  mnist_builder.prepare(data_dir)
  return data_dir


def make_config(data_dir, batch_size=32, seed=0, **data):
  """A stage config reading ``data_dir`` with ``data`` overrides."""
  c = config_base.stage_config()
  c.data.data_dir = str(data_dir)
  c.train.batch_size = batch_size
  c.seed = seed
  for k, v in data.items():
    setattr(c.data, k, v)
  return c


def take(it, n):
  return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_mnist_builder_splits(mnist_dir):
  builder = mnist_builder.prepare(mnist_dir)  # Already prepared: just opens it.
  assert {s: i.num_examples for s, i in builder.info.splits.items()} == {"train": 4000, "test": 1000}
  assert builder.info.features["image"].shape == (28, 28, 1)
  labels = np.array([int(ex["label"]) for ex in builder.as_dataset(split="test")])
  np.testing.assert_array_equal(np.bincount(labels), [100] * 10)  # Stratified.
  idx = mnist_builder.split_indices(np.repeat(np.arange(10), 500))
  assert not set(idx["train"]) & set(idx["test"]) and len(idx["train"]) == 4000


def test_sr_batches_shapes_ranges_and_low_res_from_hi_res(mnist_dir):
  c = make_config(mnist_dir, batch_size=16, image_size=32, low_res_size=8, pad_to_square=32,
                  channels=3)
  it = cdata.create_train_iterator(c, process_index=0, process_count=1)
  batch = next(it)
  assert batch["image"].shape == (16, 32, 32, 3) and batch["image"].dtype == np.uint8
  assert batch["low_res"].shape == (16, 8, 8, 3) and batch["low_res"].dtype == np.uint8
  assert batch["label"].shape == (16,) and batch["label"].dtype == np.int32
  assert 0 <= batch["label"].min() and batch["label"].max() < 10
  assert batch["image"].max() > 200 and batch["image"].min() == 0
  # Padded 28 -> 32: a 2-pixel black border.
  assert batch["image"][:, :2].max() == 0 and batch["image"][:, :, -2:].max() == 0
  # Grayscale expanded to 3 identical channels.
  np.testing.assert_array_equal(batch["image"][..., 0], batch["image"][..., 2])
  np.testing.assert_array_equal(cdata.downsample(batch["image"], 8), batch["low_res"])
  assert {k: v[0] for k, v in it.element_spec.items()} == {k: v.shape for k, v in batch.items()}


def test_flip_is_applied_to_the_pair(mnist_dir):
  kw = dict(batch_size=64, image_size=16, low_res_size=8, pad_to_square=32,
            train_split="train[:64]")
  flipped = next(cdata.create_train_iterator(make_config(mnist_dir, **kw, random_flip=True),
                                             process_count=1))
  plain = next(cdata.create_train_iterator(make_config(mnist_dir, **kw, random_flip=False),
                                           process_count=1))
  np.testing.assert_array_equal(flipped["label"], plain["label"])  # Same order.
  is_flipped = []
  for i in range(64):
    same = np.array_equal(flipped["image"][i], plain["image"][i])
    mirrored = np.array_equal(flipped["image"][i], plain["image"][i][:, ::-1])
    assert same or mirrored
    is_flipped.append(not same)
    lo = plain["low_res"][i][:, ::-1] if not same else plain["low_res"][i]
    assert np.abs(flipped["low_res"][i].astype(int) - lo).max() <= 1  # uint8 rounding only.
  assert 10 < sum(is_flipped) < 54


def test_same_seed_same_batches_and_reshuffled_epochs(mnist_dir):
  kw = dict(image_size=8, pad_to_square=32, train_split="train[:400]")
  c = make_config(mnist_dir, batch_size=100, **kw)
  a = take(cdata.create_train_iterator(c, process_count=1), 5)  # 4 batches per epoch.
  b = take(cdata.create_train_iterator(c, process_count=1), 5)
  assert_batches_equal(a, b)
  assert not np.array_equal(a[0]["label"], a[4]["label"])  # Epoch 1 reshuffled.
  other = next(cdata.create_train_iterator(make_config(mnist_dir, batch_size=100, seed=1, **kw),
                                           process_count=1))
  assert not np.array_equal(other["label"], a[0]["label"])


@pytest.mark.parametrize("cache", [True, False])
def test_resume_gives_the_same_next_batches(mnist_dir, cache):
  c = make_config(mnist_dir, batch_size=64, image_size=8, pad_to_square=32, low_res_size=4,
                  cache=cache, train_split="train[:500]")  # 7 batches per epoch.
  it = cdata.create_train_iterator(c, process_index=0, process_count=1)
  take(it, 6)
  state = json.loads(json.dumps(it.get_state()))
  assert state["epoch"] == 0 and state["examples_in_epoch"] == 6 * 64
  expected = take(it, 3)  # Crosses the epoch boundary.
  assert it.get_state()["epoch"] == 1
  resumed = cdata.create_train_iterator(c, process_index=0, process_count=1)
  resumed.set_state(state)
  assert_batches_equal(take(resumed, 3), expected)


def test_processes_read_disjoint_parts(mnist_dir):
  c = make_config(mnist_dir, batch_size=1000, image_size=28, random_flip=False,
                  train_split="train[:1000]")
  seen = []
  for p in range(2):
    it = cdata.create_train_iterator(c, process_index=p, process_count=2)
    assert it.num_examples == 500 and it.batch_size == 500
    seen.append({im.tobytes() for im in next(it)["image"]})  # The whole part of this process.
  assert len(seen[0]) > 495 and len(seen[1]) > 495
  assert not seen[0] & seen[1]


def test_eval_iterator_ordered_padded_and_equal_length_per_process(mnist_dir):
  c = make_config(mnist_dir, image_size=16, low_res_size=8, pad_to_square=32)
  its = [cdata.create_eval_iterator(c, batch_size=16, num_examples=101, process_index=p,
                                    process_count=2) for p in range(2)]
  passes = [list(it) for it in its]
  assert [len(it) for it in its] == [7, 7] and [len(p) for p in passes] == [7, 7]  # ceil(51 / 8).
  assert [int(sum(b["mask"].sum() for b in p)) for p in passes] == [51, 50]
  last = passes[1][-1]
  assert last["mask"].sum() == 2 and last["image"][~last["mask"]].max() == 0
  assert_batches_equal(passes[0], list(its[0]))  # Ordered: a second pass is identical.
  np.testing.assert_array_equal(cdata.downsample(passes[0][0]["image"], 8), passes[0][0]["low_res"])
  dropped = cdata.create_eval_iterator(c, batch_size=16, num_examples=101, process_index=1,
                                       process_count=2, drop_remainder=True)
  assert len(dropped) == 6 and all(b["mask"].all() for b in dropped)


def test_missing_dataset_says_how_to_prepare(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    cdata.create_train_iterator(make_config(tmp_path, dataset="cifar10", channels=3),
                                process_count=1)
  msg = str(e.value)
  assert "cifar10" in msg and str(tmp_path) in msg
  assert f"python -m cdm.data.prepare --dataset=cifar10 --data_dir={tmp_path}" in msg
  with pytest.raises(FileNotFoundError, match="downloads/manual"):
    cdata.create_eval_iterator(make_config(tmp_path, dataset="imagenet2012", channels=3,
                                           num_classes=1000), process_count=1)
  assert not list(tmp_path.iterdir())  # Nothing downloaded or written.


def test_config_errors(mnist_dir, tmp_path):
  with pytest.raises(ValueError, match="multiple of the number of processes"):
    cdata.create_train_iterator(make_config(mnist_dir, batch_size=9), process_index=0,
                                process_count=2)
  with pytest.raises(ValueError, match="low_res_size=12 must divide data.image_size=32"):
    cdata.create_train_iterator(make_config(mnist_dir, image_size=32, low_res_size=12),
                                process_count=1)
  with pytest.raises(ValueError, match="available splits"):
    cdata.create_train_iterator(make_config(mnist_dir, train_split="validation"), process_count=1)
  with pytest.raises(ValueError, match="Close TFDS names: .*'cifar10'"):
    cdata.create_train_iterator(make_config(tmp_path, dataset="cifar1O"), process_count=1)
  with pytest.raises(ValueError, match="image folder"):
    cdata.create_train_iterator(make_config(tmp_path, dataset=f"image_folder:{tmp_path}"),
                                process_count=1)


@pytest.fixture
def mocked_tfds():
  """TFDS datasets with random examples: no files, no download."""
  with tfds.testing.mock_data(num_examples=24, policy=tfds.testing.MockPolicy.USE_CODE), \
      mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", return_value=True):
    yield


@pytest.mark.parametrize("name,size,low", [("cifar10", 16, 8), ("imagenet_resized/64x64", 32, 16)])
def test_mocked_tfds_rgb_datasets(tmp_path, mocked_tfds, name, size, low):
  del mocked_tfds
  classes = 10 if name == "cifar10" else 1000
  c = make_config(tmp_path, batch_size=8, dataset=name, channels=3, num_classes=classes,
                  image_size=size, low_res_size=low)
  batch = next(cdata.create_train_iterator(c, process_count=1))
  assert batch["image"].shape == (8, size, size, 3) and batch["low_res"].shape == (8, low, low, 3)
  np.testing.assert_array_equal(cdata.downsample(batch["image"], low), batch["low_res"])
  with pytest.raises(ValueError, match="data.channels=3"):
    cdata.create_train_iterator(make_config(tmp_path, dataset=name, channels=1,
                                            num_classes=classes), process_count=1)


def test_image_folder(tmp_path):
  from PIL import Image  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  for split, n in (("train", 6), ("test", 3)):
    for label in ("cat", "dog"):
      (tmp_path / split / label).mkdir(parents=True)
      for i in range(n):
        h, w = rng.integers(10, 30, size=2)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)).save(
            tmp_path / split / label / f"{i}.png")
  c = make_config(tmp_path, batch_size=4, dataset=f"image_folder:{tmp_path}", channels=3,
                  image_size=8, low_res_size=4)
  parts = [cdata.create_train_iterator(c, process_index=p, process_count=2) for p in range(2)]
  assert [p.num_examples for p in parts] == [6, 6]
  batch = next(parts[0])
  assert batch["image"].shape == (2, 8, 8, 3) and set(batch["label"]) <= {0, 1}
  ev = cdata.create_eval_iterator(c, batch_size=4, process_count=1)
  assert len(ev) == 2 and int(sum(b["mask"].sum() for b in ev)) == 6


def test_bench_and_prepare(mnist_dir):
  assert prepare.prepare("cdm_mnist", mnist_dir) == {"train": 4000, "test": 1000}
  r = bench.run(make_config(mnist_dir, batch_size=64, train_split="train[:128]"), num_batches=5,
                warmup=1)
  assert r["images_per_s"] > 0 and r["shapes"]["image"] == (64, 16, 16, 1)
