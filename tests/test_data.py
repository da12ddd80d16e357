"""Tests for dnas.data: digits, TFDS sources, preparation, augmentation."""

import dataclasses
import hashlib
import io
import os
import pickle
import socket
import subprocess
import sys
import tarfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnas import data
from dnas.errors import UserError

# --------------------------------------------------------------------------
# Fixtures


@pytest.fixture
def no_network(monkeypatch):
  """Any attempt to reach the network fails at once, like an offline box."""

  def refuse(*args, **kwargs):
    raise OSError("network disabled in tests")

  monkeypatch.setattr(socket, "getaddrinfo", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)
  monkeypatch.setattr(socket.socket, "connect", refuse)


def _cifar_batch(images, labels):
  """A batch dict pickled as in the official Python-2 tarballs."""
  data_rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
  batch = {b"data": data_rows, b"batch_label": b"fake batch"}
  for key, values in labels.items():
    batch[key.encode()] = list(map(int, values))
  return pickle.dumps(batch, protocol=2)


def _add(tar, name, payload):
  info = tarfile.TarInfo(name)
  info.size = len(payload)
  tar.addfile(info, io.BytesIO(payload))


def _fake_cifar10_tarball(path, per_batch=2, num_test=3):
  """A cifar-10-python.tar.gz look-alike; returns its examples in order."""
  rng = np.random.default_rng(0)
  num_train = 5 * per_batch
  images = rng.integers(0, 256, (num_train + num_test, 32, 32, 3), np.uint8)
  labels = rng.integers(0, 10, num_train + num_test)
  names = [f"class{i}".encode() for i in range(10)]
  with tarfile.open(path, "w:gz") as tar:
    for b in range(5):
      sl = slice(b * per_batch, (b + 1) * per_batch)
      _add(
          tar,
          f"cifar-10-batches-py/data_batch_{b + 1}",
          _cifar_batch(images[sl], {"labels": labels[sl]}),
      )
    _add(
        tar,
        "cifar-10-batches-py/test_batch",
        _cifar_batch(
            images[num_train:], {"labels": labels[num_train:]}
        ),
    )
    _add(
        tar,
        "cifar-10-batches-py/batches.meta",
        pickle.dumps({b"label_names": names}, protocol=2),
    )
  return {
      "train": (images[:num_train], labels[:num_train]),
      "test": (images[num_train:], labels[num_train:]),
  }


def _fake_cifar100_tarball(path, num_train=4, num_test=2):
  rng = np.random.default_rng(1)
  n = num_train + num_test
  images = rng.integers(0, 256, (n, 32, 32, 3), np.uint8)
  fine, coarse = rng.integers(0, 100, n), rng.integers(0, 20, n)
  with tarfile.open(path, "w:gz") as tar:
    parts = (("train", slice(num_train)), ("test", slice(num_train, n)))
    for split, sl in parts:
      _add(
          tar,
          f"cifar-100-python/{split}",
          _cifar_batch(
              images[sl],
              {"fine_labels": fine[sl], "coarse_labels": coarse[sl]},
          ),
      )
    meta = {
        b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
    }
    _add(tar, "cifar-100-python/meta", pickle.dumps(meta, protocol=2))
  return images, fine, coarse


@pytest.fixture(scope="module")
def prepared_cifar10(tmp_path_factory):
  """A real (tiny) TFDS ArrayRecord cifar10 written by our prepare path."""
  root = tmp_path_factory.mktemp("tfds")
  tarball = os.fspath(root / "cifar-10-python.tar.gz")
  examples = _fake_cifar10_tarball(tarball)
  written = data._prepare_from_tarball("cifar10", tarball, os.fspath(root))
  return os.fspath(root), written, examples


def _as_set(images, labels):
  return {(im.tobytes(), int(lb)) for im, lb in zip(images, labels)}


def test_import_needs_only_jax_and_numpy():
  code = (
      "import sys, dnas.data; heavy = {'tensorflow_datasets', 'grain',"
      " 'sklearn', 'tensorflow'} & set(sys.modules); assert not heavy, heavy"
  )
  subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------
# Digits


def test_digits_shapes_dtypes_and_labels():
  train, test = data.load(), data.load("digits", "test")
  assert train.images.shape == (1437, 8, 8, 1)
  assert test.images.shape == (360, 8, 8, 1)
  for ds in (train, test):
    assert ds.images.dtype == np.uint8 and ds.labels.dtype == np.int32
    assert ds.num_classes == 10 and ds.name == "digits"
    assert set(ds.labels.tolist()) == set(range(10))
    assert ds.images.max() == 255 and ds.images.min() == 0


def test_digits_match_sklearn_order_and_scaling():
  from sklearn.datasets import load_digits

  digits = load_digits()
  expected = np.rint(digits.images * 255 / 16).astype(np.uint8)[..., None]
  train, test = data.load(None, "train"), data.load(None, "test")
  np.testing.assert_array_equal(
      np.concatenate([train.images, test.images]), expected
  )
  np.testing.assert_array_equal(
      np.concatenate([train.labels, test.labels]), digits.target
  )


def test_digits_deterministic_and_stats_from_train():
  first, again, test = data.load(), data.load(), data.load("digits", "test")
  np.testing.assert_array_equal(first.images, again.images)
  np.testing.assert_array_equal(first.labels, again.labels)
  pixels = first.images / 255.0
  np.testing.assert_allclose(first.mean, [pixels.mean()], rtol=1e-9)
  np.testing.assert_allclose(first.std, [pixels.std()], rtol=1e-9)
  assert test.mean == first.mean and test.std == first.std


@pytest.mark.parametrize(
    "spec",
    ["train[:100]", "train[10%:20%]", "test[-7:]", "train[:5]+test[-5:]",
     "train[1437:]", "train[33%:-5]", "test[-100%:]", "train[:0.5%]"],
)
def test_digits_split_slicing_matches_tfds(spec):
  import tensorflow_datasets as tfds

  infos = {
      name: tfds.core.SplitInfo(name=name, shard_lengths=[n], num_bytes=0)
      for name, n in (("train", 1437), ("test", 360))
  }
  full = {"train": data.load(), "test": data.load("digits", "test")}
  expected = np.concatenate([
      full[i.splitname].labels[i.from_:i.to]
      for i in tfds.core.ReadInstruction.from_spec(spec).to_absolute(infos)
  ])
  np.testing.assert_array_equal(data.load("digits", spec).labels, expected)


@pytest.mark.parametrize(
    "spec",
    ["validation", "train[a:b]", "train[:200%]", "train[1500:]", "train[:1.5]"],
)
def test_digits_bad_split(spec):
  with pytest.raises(UserError, match="split"):
    data.load("digits", spec)


def test_array_dataset_rejects_bad_arrays():
  with pytest.raises(UserError, match="uint8"):
    data.ArrayDataset(
        np.zeros((2, 4, 4, 1), np.float32), np.zeros(2, np.int32), 2, "x",
        (0.0,), (1.0,),
    )
  with pytest.raises(UserError, match="labels"):
    data.ArrayDataset(
        np.zeros((2, 4, 4, 1), np.uint8), np.zeros(3, np.int32), 2, "x",
        (0.0,), (1.0,),
    )
  with pytest.raises(UserError, match="per channel"):
    data.ArrayDataset(
        np.zeros((2, 4, 4, 3), np.uint8), np.zeros(2, np.int32), 2, "x",
        (0.0,), (1.0,),
    )


# --------------------------------------------------------------------------
# Search split, batch order, sharding


def test_search_split_keeps_stored_order():
  train = data.load()
  weights_set, alphas_set = data.search_split(train)
  assert len(weights_set) == 718 and len(alphas_set) == 719
  np.testing.assert_array_equal(weights_set.images, train.images[:718])
  np.testing.assert_array_equal(alphas_set.images, train.images[718:])
  np.testing.assert_array_equal(alphas_set.labels, train.labels[718:])
  assert weights_set.mean == train.mean and alphas_set.std == train.std
  first, _ = data.search_split(train, 0.8)
  assert len(first) == int(0.8 * 1437)


@pytest.mark.parametrize("portion", [0.0, 1.0, -0.5, 1e-9])
def test_search_split_rejects_empty_halves(portion):
  with pytest.raises(UserError, match="portion"):
    data.search_split(data.load(), portion)


def test_epoch_permutation_is_deterministic_and_resumable():
  order = data.epoch_permutation(100, 3, seed=7)
  assert order.dtype == np.int32
  assert sorted(order.tolist()) == list(range(100))
  np.testing.assert_array_equal(order, data.epoch_permutation(100, 3, seed=7))
  assert not np.array_equal(order, data.epoch_permutation(100, 4, seed=7))
  assert not np.array_equal(order, data.epoch_permutation(100, 3, seed=8))

  batch_size, steps = 16, data.num_batches(100, 16)

  def batches(start_epoch, start_step):
    seen = []
    for epoch in range(start_epoch, 3):
      perm = data.epoch_permutation(100, epoch, seed=1)
      first = start_step if epoch == start_epoch else 0
      for step in range(first, steps):
        seen.append(perm[step * batch_size:(step + 1) * batch_size].tolist())
    return seen

  uninterrupted = batches(0, 0)
  resumed = batches(1, 4)  # restart at epoch 1, step 4
  assert resumed == uninterrupted[steps + 4:]


def test_num_batches():
  assert data.num_batches(10, 4) == 2
  assert data.num_batches(10, 4, drop_remainder=False) == 3
  assert data.num_batches(8, 4, drop_remainder=False) == 2
  with pytest.raises(UserError, match="batch size"):
    data.num_batches(10, 0)


def test_shard_for_process_is_contiguous_and_even():
  order = data.epoch_permutation(10, 0, seed=0)
  shards = [data.shard_for_process(order, i, 3) for i in range(3)]
  assert [len(s) for s in shards] == [3, 3, 3]
  np.testing.assert_array_equal(np.concatenate(shards), order[:9])
  train = data.load()
  shard = data.shard_for_process(train, 1, 2)
  np.testing.assert_array_equal(shard.labels, train.labels[718:1436])
  with pytest.raises(UserError, match="process index"):
    data.shard_for_process(order, 3, 3)


# --------------------------------------------------------------------------
# normalize / augment


def test_normalize():
  images = jnp.array([[[[0, 255, 51]]]], jnp.uint8)
  out = jax.jit(data.normalize)(images, (0.5, 0.5, 0.2), (0.5, 0.25, 0.1))
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out[0, 0, 0], [-1.0, 2.0, 0.0], atol=1e-6)
  with pytest.raises(UserError, match="channels"):
    data.normalize(images, (0.5,), (0.5,))


def _numbered(batch, height, width, channels=1):
  """Images whose pixels are all distinct and nonzero."""
  size = height * width * channels
  values = np.arange(1, batch * size + 1, dtype=np.float32)
  return values.reshape(batch, height, width, channels)


def test_augment_disabled_is_identity():
  images = _numbered(3, 5, 6, 2)
  out = data.augment(images, key=jax.random.key(0), pad=0, flip=False, cutout=0)
  np.testing.assert_array_equal(out, images)


def test_augment_keeps_shape_and_dtype():
  images = jnp.asarray(data.load().images[:8])
  out = jax.jit(lambda x, k: data.augment(x, key=k, cutout=4))(
      images, jax.random.key(1)
  )
  assert out.shape == images.shape and out.dtype == jnp.uint8


def test_random_crop_matches_numpy_reference():
  pad, batch, height, width = 2, 64, 3, 4
  images = _numbered(batch, height, width)
  out = np.asarray(
      data.augment(images, key=jax.random.key(3), pad=pad, flip=False)
  )
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  offsets = set()
  for i in range(batch):
    matches = [
        (dy, dx)
        for dy in range(2 * pad + 1)
        for dx in range(2 * pad + 1)
        if np.array_equal(out[i], padded[i, dy:dy + height, dx:dx + width])
    ]
    assert len(matches) == 1, f"sample {i} is not a crop of its padded image"
    offsets.add(matches[0])
  assert {dy for dy, _ in offsets} == set(range(2 * pad + 1))
  assert {dx for _, dx in offsets} == set(range(2 * pad + 1))


def test_flip_matches_numpy_reference():
  images = _numbered(64, 3, 4, 2)
  out = np.asarray(data.augment(images, key=jax.random.key(4), pad=0))
  flipped = [np.array_equal(o, im[:, ::-1]) for o, im in zip(out, images)]
  kept = [np.array_equal(o, im) for o, im in zip(out, images)]
  assert all(f != k for f, k in zip(flipped, kept))
  assert 10 < sum(flipped) < 54


def test_cutout_zeroes_exactly_a_clipped_square():
  size, height, width, channels = 4, 10, 12, 3
  images = np.ones((200, height, width, channels), np.float32)
  out = np.asarray(
      data.augment(
          images, key=jax.random.key(5), pad=0, flip=False, cutout=size
      )
  )
  full_squares = 0
  for sample in out:
    zero = sample == 0
    assert (zero == zero[..., :1]).all(), "channels differ"
    zero = zero[..., 0]
    rows, cols = zero.any(1), zero.any(0)
    np.testing.assert_array_equal(zero, np.outer(rows, cols))
    row_idx, col_idx = np.flatnonzero(rows), np.flatnonzero(cols)
    for idx in (row_idx, col_idx):
      contiguous = len(idx) == 0 or idx[-1] - idx[0] + 1 == len(idx)
      assert contiguous and len(idx) <= size
    touches_border = (
        len(row_idx) == 0
        or row_idx[0] == 0 or row_idx[-1] == height - 1
        or col_idx[0] == 0 or col_idx[-1] == width - 1
    )
    if not touches_border:
      assert (len(row_idx), len(col_idx)) == (size, size)
      full_squares += 1
    assert (sample[~zero] == 1).all()
  assert full_squares > 50


def test_augment_is_deterministic_per_key():
  images = _numbered(16, 6, 6, 3)
  run = jax.jit(lambda x, k: data.augment(x, key=k, pad=2, cutout=3))
  a = run(images, jax.random.key(9))
  np.testing.assert_array_equal(a, run(images, jax.random.key(9)))
  assert not np.array_equal(a, run(images, jax.random.key(10)))


def test_augment_rejects_negative_sizes():
  with pytest.raises(UserError, match="pad"):
    data.augment(_numbered(1, 4, 4), key=jax.random.key(0), pad=-1)


# --------------------------------------------------------------------------
# TFDS: mock data, a real tiny ArrayRecord dataset, errors


@pytest.mark.parametrize("name,classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_through_mock_data(name, classes):
  import tensorflow_datasets as tfds

  with tfds.testing.mock_data(num_examples=12):
    ds = data.load(name, "train")
  assert ds.images.shape == (12, 32, 32, 3) and ds.images.dtype == np.uint8
  assert ds.labels.dtype == np.int32 and ds.labels.max() < classes
  assert ds.num_classes == classes and ds.name == name
  assert ds.mean == data._CHANNEL_STATS[name][0]


def test_cifar10_tarball_to_examples(tmp_path):
  tarball = os.fspath(tmp_path / "cifar-10-python.tar.gz")
  examples = _fake_cifar10_tarball(tarball)
  splits, names = data._examples_from_cifar_tarball(tarball)
  assert names == {"label": [f"class{i}" for i in range(10)]}
  for split, (images, labels) in examples.items():
    np.testing.assert_array_equal(splits[split]["image"], images)
    np.testing.assert_array_equal(splits[split]["label"], labels)


def test_cifar_tarball_pixel_layout(tmp_path):
  # One image whose red plane is 1, green 2, blue 3, and pixel (0, 1) red 9:
  # the pickle stores channel planes, row-major.
  image = np.zeros((1, 32, 32, 3), np.uint8) + np.array([1, 2, 3], np.uint8)
  image[0, 0, 1, 0] = 9
  planes = np.zeros((1, 3072), np.uint8)
  planes[0, :1024], planes[0, 1024:2048], planes[0, 2048:] = 1, 2, 3
  planes[0, 1] = 9
  batch = pickle.dumps({b"data": planes, b"labels": [4]}, protocol=2)
  tarball = os.fspath(tmp_path / "c.tar.gz")
  with tarfile.open(tarball, "w:gz") as tar:
    for b in range(1, 6):
      _add(tar, f"cifar-10-batches-py/data_batch_{b}", batch)
    _add(tar, "cifar-10-batches-py/test_batch", batch)
    _add(
        tar,
        "cifar-10-batches-py/batches.meta",
        pickle.dumps({b"label_names": [b"a"] * 10}, protocol=2),
    )
  splits, _ = data._examples_from_cifar_tarball(tarball)
  np.testing.assert_array_equal(splits["test"]["image"], image)


def test_cifar100_tarball_to_examples(tmp_path):
  tarball = os.fspath(tmp_path / "cifar-100-python.tar.gz")
  images, fine, coarse = _fake_cifar100_tarball(tarball)
  splits, names = data._examples_from_cifar_tarball(tarball)
  np.testing.assert_array_equal(splits["train"]["image"], images[:4])
  np.testing.assert_array_equal(splits["test"]["label"], fine[4:])
  np.testing.assert_array_equal(splits["test"]["coarse_label"], coarse[4:])
  assert names["label"][7] == "fine7" and names["coarse_label"][3] == "coarse3"


def test_not_a_cifar_tarball(tmp_path):
  tarball = os.fspath(tmp_path / "x.tar.gz")
  with tarfile.open(tarball, "w:gz") as tar:
    _add(tar, "something/else", b"hello")
  with pytest.raises(UserError, match="not a CIFAR"):
    data._examples_from_cifar_tarball(tarball)


def test_prepared_cifar10_reads_back(prepared_cifar10, no_network):
  data_dir, written, examples = prepared_cifar10
  assert written == os.path.join(data_dir, "cifar10", "3.0.2")
  files = os.listdir(written)
  assert any(f.startswith("cifar10-train.array_record") for f in files)
  for split, (images, labels) in examples.items():
    ds = data.load("cifar10", split, data_dir=data_dir)
    assert ds.images.shape == images.shape and ds.num_classes == 10
    assert _as_set(ds.images, ds.labels) == _as_set(images, labels)
    assert ds.mean == (0.4914, 0.4822, 0.4465)
  train = data.load("cifar10", "train", data_dir=data_dir)
  head = data.load("cifar10", "train[:3]", data_dir=data_dir)
  np.testing.assert_array_equal(head.images, train.images[:3])
  assert "tensorflow" not in sys.modules


def test_prepared_cifar10_through_tfds_itself(prepared_cifar10, no_network):
  import tensorflow_datasets as tfds

  data_dir, _, examples = prepared_cifar10
  source = tfds.data_source(
      "cifar10", split="test", data_dir=data_dir, download=False,
      builder_kwargs={"file_format": "array_record"},
  )
  ids = sorted(source[i]["id"] for i in range(len(source)))
  assert ids == [b"test_00000", b"test_00001", b"test_00002"]
  names = source.dataset_info.features["label"].names
  assert names == [f"class{i}" for i in range(10)]
  assert len(source) == len(examples["test"][1])


def test_prepare_reuses_prepared_dataset_offline(prepared_cifar10, no_network):
  data_dir, written, _ = prepared_cifar10
  assert data.prepare("cifar10", data_dir) == written


def test_prepare_offline_fails_in_one_line(tmp_path, no_network):
  start = time.monotonic()
  with pytest.raises(UserError, match="cannot download https://www.cs") as err:
    data.prepare("cifar10", os.fspath(tmp_path))
  assert "\n" not in str(err.value)
  assert time.monotonic() - start < 10
  assert not os.listdir(tmp_path / "downloads")


def test_prepare_uses_a_downloaded_tarball_offline(
    tmp_path, no_network, monkeypatch
):
  os.makedirs(tmp_path / "downloads")
  tarball = tmp_path / "downloads" / "cifar-10-python.tar.gz"
  examples = _fake_cifar10_tarball(os.fspath(tarball))
  md5 = hashlib.md5(tarball.read_bytes()).hexdigest()
  fake = dataclasses.replace(data._CIFAR["cifar10"], md5=md5)
  monkeypatch.setitem(data._CIFAR, "cifar10", fake)
  written = data.prepare("cifar10", os.fspath(tmp_path))
  assert written == os.fspath(tmp_path / "cifar10" / "3.0.2")
  test = data.load("cifar10", "test", data_dir=os.fspath(tmp_path))
  assert _as_set(test.images, test.labels) == _as_set(*examples["test"])


def test_prepare_unknown_name(tmp_path):
  with pytest.raises(UserError, match="tfds build mnist"):
    data.prepare("mnist", os.fspath(tmp_path))


def test_prepare_cifar100_from_tarball(tmp_path, no_network):
  tarball = os.fspath(tmp_path / "cifar-100-python.tar.gz")
  images, fine, _ = _fake_cifar100_tarball(tarball)
  data._prepare_from_tarball("cifar100", tarball, os.fspath(tmp_path))
  ds = data.load("cifar100", "test", data_dir=os.fspath(tmp_path))
  assert ds.num_classes == 100
  assert _as_set(ds.images, ds.labels) == _as_set(images[4:], fine[4:])


@pytest.mark.parametrize(
    "name,hint", [("cifar10", "dnas prepare cifar10 --data-dir"),
                  ("cifar100", "dnas prepare cifar100 --data-dir"),
                  ("mnist", "tfds build mnist --file_format=array_record")],
)
def test_unprepared_dataset_says_how_to_prepare(
    tmp_path, no_network, name, hint
):
  start = time.monotonic()
  with pytest.raises(UserError, match="not prepared") as err:
    data.load(name, data_dir=os.fspath(tmp_path))
  assert hint in str(err.value) and os.fspath(tmp_path) in str(err.value)
  assert "\n" not in str(err.value)
  assert time.monotonic() - start < 10


def test_bad_split_of_prepared_dataset(prepared_cifar10, no_network):
  with pytest.raises(UserError, match="split 'validation'"):
    data.load("cifar10", "validation", data_dir=prepared_cifar10[0])


@pytest.mark.parametrize(
    "name", ["no_such_dataset", "hf:some/thing", "CIFAR-10"]
)
def test_unknown_dataset_lists_known_ones(name, tmp_path, no_network):
  with pytest.raises(UserError, match="unknown dataset") as err:
    data.load(name, data_dir=os.fspath(tmp_path))
  assert "digits, cifar10, cifar100" in str(err.value)
  assert "\n" not in str(err.value)


def test_other_tfds_dataset_gets_its_own_stats():
  import tensorflow_datasets as tfds

  with tfds.testing.mock_data(num_examples=5):
    ds = data.load("mnist", "test")
  assert ds.images.shape == (5, 28, 28, 1) and ds.num_classes == 10
  pixels = ds.images / 255.0
  np.testing.assert_allclose(ds.mean, [pixels.mean()], rtol=1e-9)
  np.testing.assert_allclose(ds.std, [pixels.std()], rtol=1e-9)


def test_non_image_dataset_is_refused(tmp_path, no_network):
  import tensorflow_datasets as tfds

  with tfds.testing.mock_data(num_examples=2):
    with pytest.raises(UserError, match="'image' and 'label'"):
      data.load("imdb_reviews", data_dir=os.fspath(tmp_path))
