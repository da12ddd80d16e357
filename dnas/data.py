"""Datasets for search and training: embedded digits, TFDS sources, batching.

Search and training keep the whole (small) dataset resident on the device, so
``load`` returns numpy arrays in an ``ArrayDataset``; batches are gathered on
the device with indices from ``epoch_permutation``, and ``normalize`` and
``augment`` run inside the jitted step.

Where the data comes from:

* ``load()`` or ``load('digits')``: scikit-learn's bundled ``load_digits``
  (1797 real 8x8 handwritten digits shipped in the wheel, no download). The
  split is fixed and uses no randomness: in scikit-learn's order, the first
  1437 images (``floor(0.8 * 1797)``) are ``'train'``, the last 360 ``'test'``.
  Pixels 0..16 are scaled to 0..255, rounding half up.
* ``load('cifar10')``, ``load('cifar100')`` or any TFDS image-classification
  name with ``'image'`` and ``'label'`` features: a TFDS ArrayRecord data
  source, read without TensorFlow and decoded through grain. Nothing is ever
  downloaded here; an unprepared dataset is a ``UserError`` that says how to
  prepare it.
* ``prepare('cifar10', data_dir)`` (``dnas prepare cifar10 --data-dir DIR``):
  downloads the official python-pickle tarball, checks its md5 and writes TFDS
  ArrayRecord files that ``load('cifar10', data_dir=DIR)`` reads. It uses TFDS's
  own builder with PNG encoding done by Pillow, so no TensorFlow is needed, and
  examples are keyed by their tarball index as in TFDS's own builder, so the
  stored (hash-shuffled) order is the one TFDS itself would write.

``tensorflow_datasets``, ``grain`` and ``sklearn`` are imported inside the
functions that need them: a machine with only jax can still use ``normalize``,
``augment`` and the batch-order helpers.

  >>> from dnas import data
  >>> train = data.load()                       # digits, 'train' split
  >>> weights_set, alphas_set = data.search_split(train)
  >>> order = data.epoch_permutation(len(weights_set), 0, seed=0)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
import dataclasses
import functools
import hashlib
import io
import math
import os
import pickle
import re
import shutil
import tarfile
import urllib.error
import urllib.request

import jax
import jax.numpy as jnp
import numpy as np

from dnas.errors import UserError

__all__ = [
    "ArrayDataset",
    "KNOWN_DATASETS",
    "load",
    "prepare",
    "search_split",
    "normalize",
    "augment",
    "epoch_permutation",
    "num_batches",
    "shard_for_process",
]

KNOWN_DATASETS = ("digits", "cifar10", "cifar100")

# Per-channel statistics in [0, 1] units: CIFAR-10 from the DARTS reference
# (cnn/utils.py _data_transforms_cifar10), CIFAR-100 the values commonly used.
_CHANNEL_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

_DIGITS_TRAIN_FRACTION = 0.8

# Reads at least this large show a progress bar.
_PROGRESS_MIN_EXAMPLES = 10_000
_READ_CHUNK = 256

_DOWNLOAD_TIMEOUT_S = 60.0


@dataclasses.dataclass(frozen=True)
class _CifarSource:
  url: str
  md5: str
  folder: str  # top-level folder inside the tarball
  splits: dict[str, tuple[str, ...]]  # split -> member files
  meta: str
  label_keys: dict[str, str]  # TFDS feature -> pickle key of the labels
  name_keys: dict[str, str]  # TFDS feature -> pickle key of the class names


_CIFAR = {
    "cifar10": _CifarSource(
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        folder="cifar-10-batches-py",
        splits={
            "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
            "test": ("test_batch",),
        },
        meta="batches.meta",
        label_keys={"label": "labels"},
        name_keys={"label": "label_names"},
    ),
    "cifar100": _CifarSource(
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        folder="cifar-100-python",
        splits={"train": ("train",), "test": ("test",)},
        meta="meta",
        label_keys={"label": "fine_labels", "coarse_label": "coarse_labels"},
        name_keys={
            "label": "fine_label_names",
            "coarse_label": "coarse_label_names",
        },
    ),
}


@dataclasses.dataclass(frozen=True, eq=False)
class ArrayDataset:
  """An image-classification dataset held in host memory as numpy arrays.

  Attributes:
    images: ``(N, H, W, C)`` uint8 pixels, NHWC.
    labels: ``(N,)`` int32 class indices in ``[0, num_classes)``.
    num_classes: number of classes.
    name: dataset name, e.g. ``'digits'`` or ``'cifar10'``.
    mean: per-channel mean in [0, 1] units, for ``normalize``.
    std: per-channel standard deviation in [0, 1] units, for ``normalize``.

  Example:
    >>> ds = ArrayDataset(np.zeros((2, 8, 8, 1), np.uint8),
    ...                   np.array([0, 1], np.int32), 2, 'toy', (0.5,), (0.25,))
    >>> len(ds)
    2
  """

  images: np.ndarray
  labels: np.ndarray
  num_classes: int
  name: str
  mean: tuple[float, ...]
  std: tuple[float, ...]

  def __post_init__(self):
    images, labels = self.images, self.labels
    if images.ndim != 4 or images.dtype != np.uint8:
      raise UserError(
          f"dataset {self.name!r}: images must be uint8 (N, H, W, C), got"
          f" {images.dtype} {images.shape}"
      )
    if labels.shape != (images.shape[0],) or labels.dtype != np.int32:
      raise UserError(
          f"dataset {self.name!r}: labels must be int32 ({images.shape[0]},),"
          f" got {labels.dtype} {labels.shape}"
      )
    channels = images.shape[-1]
    if len(self.mean) != channels or len(self.std) != channels:
      raise UserError(
          f"dataset {self.name!r}: mean and std need {channels} values (one per"
          f" channel), got {len(self.mean)} and {len(self.std)}"
      )

  def __len__(self) -> int:
    return self.images.shape[0]


def load(
    name: str | None = None,
    split: str = "train",
    *,
    data_dir: str | None = None,
) -> ArrayDataset:
  """Loads a whole split into memory.

  Args:
    name: ``None`` or ``'digits'`` for the embedded digits; ``'cifar10'``,
      ``'cifar100'`` or another TFDS image-classification dataset prepared as
      ArrayRecord in ``data_dir``.
    split: ``'train'``, ``'test'`` or a TFDS split string such as
      ``'train[:1000]'``, ``'train[10%:]'`` or ``'train[:5]+test[:5]'``.
    data_dir: TFDS data directory; ``None`` means TFDS's default
      (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``). Unused for digits.

  Returns:
    The split as an ``ArrayDataset`` in stored order. ``mean``/``std`` are the
    DARTS constants for CIFAR, the train split's statistics for digits, and the
    loaded split's own statistics for other TFDS datasets (normalize a test
    split with its train split's values).

  Raises:
    UserError: unknown dataset or split, a dataset not prepared in
      ``data_dir``, or tensorflow-datasets missing.

  Example:
    >>> test = load('digits', 'test')
    >>> test.images.shape, test.num_classes
    ((360, 8, 8, 1), 10)
  """
  if name is None or name == "digits":
    return _load_digits(split)
  if data_dir is not None:
    data_dir = os.path.expanduser(data_dir)
  return _load_tfds(name, split, data_dir)


def _load_digits(split: str) -> ArrayDataset:
  """The embedded digits, split in scikit-learn's order (module docstring)."""
  from sklearn import datasets as sklearn_datasets

  digits = sklearn_datasets.load_digits()
  pixels = digits.images.astype(np.int32)  # (1797, 8, 8), values 0..16
  images = ((pixels * 255 + 8) // 16).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int32)
  num_train = math.floor(_DIGITS_TRAIN_FRACTION * len(labels))
  parts = {
      "train": np.arange(num_train),
      "test": np.arange(num_train, len(labels)),
  }
  mean, std = _channel_stats(images[parts["train"]])
  indices = _resolve_split(
      split, {part: len(idx) for part, idx in parts.items()}, "digits"
  )
  chosen = np.concatenate([parts[part][sl] for part, sl in indices])
  return ArrayDataset(images[chosen], labels[chosen], 10, "digits", mean, std)


_SPLIT_PART = re.compile(
    r"^(?P<split>\w+)(\[(?P<start>-?[\d.]+)?(?P<start_unit>%)?"
    r":(?P<stop>-?[\d.]+)?(?P<stop_unit>%)?\])?$"
)


def _resolve_split(
    split: str, sizes: dict[str, int], dataset: str
) -> list[tuple[str, slice]]:
  """Parses a TFDS split string into ``(split, slice)`` parts.

  Follows TFDS's ``ReadInstruction.from_spec``: ``+`` concatenates, one ``%``
  makes both bounds percentages (rounded to the closest example), negative
  bounds count from the end, and a bound past the split's size is an error.
  """
  parts = []
  for part in split.replace(" ", "").split("+"):
    match = _SPLIT_PART.match(part)
    if match is None or match["split"] not in sizes:
      raise UserError(
          f"unknown split {split!r} for {dataset}; use one of"
          f" {', '.join(sizes)}, optionally sliced like 'train[:1000]' or"
          " 'train[10%:]'"
      )
    size = sizes[match["split"]]
    percent = bool(match["start_unit"] or match["stop_unit"])
    bounds = []
    for text in (match["start"], match["stop"]):
      if text is None:
        bounds.append(None)
        continue
      try:
        value = (
            int(round(float(text) * size / 100.0)) if percent else int(text)
        )
      except ValueError:
        raise UserError(
            f"bad bound {text!r} in split {split!r}; use integers or"
            " percentages like 'train[:10%]'"
        ) from None
      if abs(value) > size:
        raise UserError(
            f"split {split!r} slices past the {size} examples of"
            f" {match['split']!r} in {dataset}"
        )
      bounds.append(value)
    parts.append((match["split"], slice(*bounds)))
  return parts


def _import_tfds(name: str):
  try:
    import tensorflow_datasets as tfds
  except ImportError:
    raise UserError(
        f"dataset {name!r} needs tensorflow-datasets; install it with `pip"
        " install tensorflow-datasets grain array_record`, or use 'digits'"
    ) from None
  return tfds


# A TFDS name, optionally with config and version; no namespace, so that a
# community-dataset lookup (network) is never triggered.
_TFDS_NAME = re.compile(r"^[a-z0-9_]+(/[\w.-]+)?(:[\d.*]+)?$")


def _base_name(name: str) -> str:
  """``'cifar10:3.0.2'`` -> ``'cifar10'``; drops config and version."""
  return name.split("/")[0].split(":")[0]


def _unknown_dataset(name: str) -> UserError:
  return UserError(
      f"unknown dataset {name!r}; known: {', '.join(KNOWN_DATASETS)}, or any"
      " TFDS image-classification name with 'image' and 'label' features"
  )


def _how_to_prepare(name: str, where: str) -> str:
  if name in _CIFAR:
    return (
        f"run `dnas prepare {name} --data-dir {where}` (downloads once), then"
        " load with the same data dir"
    )
  return (
      f"prepare it as ArrayRecord on a machine with TensorFlow: `tfds build"
      f" {name} --file_format=array_record --data_dir={where}`"
  )


def _open_tfds_source(name: str, split: str, data_dir: str | None):
  """``tfds.data_source`` with ``download=False``, failures told in one line."""
  tfds = _import_tfds(name)
  if not _TFDS_NAME.match(name):
    raise _unknown_dataset(name)
  try:
    return tfds.data_source(
        name,
        split=split,
        data_dir=data_dir,
        download=False,
        builder_kwargs={"file_format": "array_record"},
    )
  except tfds.core.registered.DatasetNotFoundError:
    raise _unknown_dataset(name) from None
  except (KeyError, ValueError, NotImplementedError, AssertionError) as err:
    # Tell apart "not prepared", "prepared in another format" and "bad split".
    builder = tfds.builder(name, data_dir=data_dir)
    where = os.fspath(builder.data_dir_root)
    base_name = _base_name(name)
    if not builder.is_prepared():
      raise UserError(
          f"dataset {name!r} is not prepared in {where}; "
          + _how_to_prepare(base_name, where)
      ) from None
    file_format = builder.info.file_format
    if file_format is not None and file_format.value != "array_record":
      raise UserError(
          f"dataset {name!r} in {where} is stored as {file_format.value}, not"
          " array_record; use another data dir and "
          + _how_to_prepare(base_name, "DIR")
      ) from None
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
    raise UserError(
        f"cannot read split {split!r} of {name!r}: {reason.strip('.')};"
        f" available splits: {', '.join(builder.info.splits)}"
    ) from None


def _load_tfds(name: str, split: str, data_dir: str | None) -> ArrayDataset:
  """Reads a TFDS ArrayRecord split into memory through grain."""
  source = _open_tfds_source(name, split, data_dir)
  features = source.dataset_info.features
  if "image" not in features or "label" not in features:
    raise UserError(
        f"dataset {name!r} has features {sorted(features)}; dnas needs an"
        " image-classification dataset with 'image' and 'label'"
    )
  image_shape = tuple(features["image"].shape)
  if None in image_shape or len(image_shape) != 3:
    raise UserError(
        f"dataset {name!r} has images of shape {image_shape}; dnas needs one"
        " fixed (H, W, C) size"
    )
  num_classes = int(features["label"].num_classes)
  images, labels = _read_all(source, image_shape, f"{name}:{split}")
  if _base_name(name) in _CHANNEL_STATS:
    mean, std = _CHANNEL_STATS[_base_name(name)]
  else:
    mean, std = _channel_stats(images)
  return ArrayDataset(images, labels, num_classes, name, mean, std)


def _read_all(
    source, image_shape: tuple[int, ...], description: str
) -> tuple[np.ndarray, np.ndarray]:
  """Decodes every example of a TFDS data source, in order, through grain.

  Grain reader threads each fetch a chunk with one batched ArrayRecord read
  (``__getitems__``), about 1.6 times faster than reading example by example.
  """
  import grain
  import tqdm

  count, chunk = len(source), _READ_CHUNK
  # tfds.testing.mock_data (4.9.10) patches in a reader whose batched read is
  # broken; its reader's type has no __getitems__, so read one by one there.
  batched = hasattr(type(getattr(source, "data_source", None)), "__getitems__")

  def read_chunk(index: int) -> tuple[np.ndarray, np.ndarray]:
    keys = range(index * chunk, min(count, (index + 1) * chunk))
    if batched:
      examples = source.__getitems__(list(keys))
    else:
      examples = [source[key] for key in keys]
    return (
        np.stack([example["image"] for example in examples]),
        np.array([example["label"] for example in examples], np.int32),
    )

  chunks = (
      grain.MapDataset.range(num_batches(count, chunk, drop_remainder=False))
      .map(read_chunk)
      .to_iter_dataset(grain.ReadOptions(num_threads=os.cpu_count() or 1))
  )
  images = np.empty((count, *image_shape), np.uint8)
  labels = np.empty((count,), np.int32)
  start = 0
  with tqdm.tqdm(
      total=count,
      desc=f"reading {description}",
      unit=" images",
      disable=count < _PROGRESS_MIN_EXAMPLES,
      leave=False,
  ) as progress:
    for chunk_images, chunk_labels in chunks:
      stop = start + len(chunk_labels)
      images[start:stop] = chunk_images.reshape(-1, *image_shape)
      labels[start:stop] = chunk_labels
      progress.update(stop - start)
      start = stop
  return images, labels


def _channel_stats(
    images: np.ndarray,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel mean and std in [0, 1] units, in float64 chunks."""
  total = np.zeros(images.shape[-1])
  total_squares = np.zeros(images.shape[-1])
  for start in range(0, len(images), 4096):
    pixels = images[start:start + 4096].astype(np.float64) / 255.0
    total += pixels.sum((0, 1, 2))
    total_squares += np.square(pixels).sum((0, 1, 2))
  count = images.size // images.shape[-1]
  mean = total / count
  std = np.sqrt(np.maximum(total_squares / count - np.square(mean), 0.0))
  return tuple(map(float, mean)), tuple(map(float, std))


def search_split(
    train: ArrayDataset, portion: float = 0.5
) -> tuple[ArrayDataset, ArrayDataset]:
  """The DARTS search split: the first part trains weights, the rest alphas.

  As in the DARTS reference ``train_search.py``: ``split = floor(portion * N)``,
  weights on ``indices[:split]``, architecture on ``indices[split:]``, in the
  stored order (no shuffling). Both halves keep ``train``'s mean and std.
  TFDS stores CIFAR in its own fixed (hash-shuffled) order, not torchvision's,
  so the halves hold different images than the reference's halves, drawn the
  same way.

  Args:
    train: the training set.
    portion: fraction of ``train`` used for the weights, in (0, 1).

  Returns:
    ``(weights_set, alphas_set)``.

  Example:
    >>> weights_set, alphas_set = search_split(load('digits'), 0.5)
    >>> len(weights_set), len(alphas_set)
    (718, 719)
  """
  split = math.floor(portion * len(train))
  if not 0.0 < portion < 1.0 or split == 0 or split == len(train):
    raise UserError(
        f"search split portion {portion} leaves an empty half of"
        f" {len(train)} examples; use a value in (0, 1) such as 0.5"
    )
  first = dataclasses.replace(
      train, images=train.images[:split], labels=train.labels[:split]
  )
  rest = dataclasses.replace(
      train, images=train.images[split:], labels=train.labels[split:]
  )
  return first, rest


def normalize(
    images: jax.Array, mean: Sequence[float], std: Sequence[float]
) -> jax.Array:
  """Scales uint8 pixels to [0, 1] and standardizes each channel.

  Args:
    images: ``(..., C)`` uint8 (or float in 0..255) pixels.
    mean: ``C`` channel means in [0, 1] units.
    std: ``C`` channel standard deviations in [0, 1] units.

  Returns:
    float32 ``(images / 255 - mean) / std``.

  Example:
    >>> x = normalize(jnp.full((1, 2, 2, 1), 255, jnp.uint8), (0.5,), (0.5,))
    >>> float(x[0, 0, 0, 0])
    1.0
  """
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  if mean.shape != (images.shape[-1],) or std.shape != (images.shape[-1],):
    raise UserError(
        f"normalize: images have {images.shape[-1]} channels but mean/std have"
        f" shapes {mean.shape}/{std.shape}"
    )
  # Explicit ranks keep this valid under jax_numpy_rank_promotion='raise'.
  shape = (1,) * (images.ndim - 1) + (-1,)
  pixels = jnp.asarray(images).astype(jnp.float32) / 255.0
  return (pixels - mean.reshape(shape)) / std.reshape(shape)


def augment(
    images: jax.Array,
    *,
    key: jax.Array,
    pad: int = 4,
    flip: bool = True,
    cutout: int = 0,
) -> jax.Array:
  """DARTS training augmentation on a batch, on the device, jit-able.

  In order, each with its own randomness per sample: a random ``H x W`` crop
  of the image zero-padded by ``pad`` pixels (offsets uniform in
  ``0..2 * pad`` as torchvision's ``RandomCrop(padding=pad)``), a horizontal
  flip with probability 0.5, and cutout: a ``cutout x cutout`` square zeroed
  around a uniform center, clipped at the borders (DeVries & Taylor 2017, as
  in the DARTS reference ``utils.Cutout``). ``pad``, ``flip`` and ``cutout``
  are static; ``pad=0, flip=False, cutout=0`` returns ``images`` unchanged.

  Zeros are zeros of whatever ``images`` holds. The DARTS recipe pads uint8
  pixels (black) but cuts out normalized ones (the mean color); reproduce it
  with two calls:

    >>> images = jnp.zeros((8, 32, 32, 3), jnp.uint8)
    >>> crop_key, cutout_key = jax.random.split(jax.random.key(0))
    >>> x = augment(images, key=crop_key, pad=4, flip=True)
    >>> x = normalize(x, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    >>> x = augment(x, key=cutout_key, pad=0, flip=False, cutout=16)

  Args:
    images: ``(B, H, W, C)`` batch, any dtype.
    key: PRNG key; each sample draws its own crop, flip and cutout from it.
    pad: zero padding on each side before the crop; 0 disables the crop.
    flip: whether to flip horizontally with probability 0.5.
    cutout: side of the cutout square; 0 disables cutout.

  Returns:
    The augmented batch, same shape and dtype as ``images``.
  """
  if pad < 0 or cutout < 0:
    raise UserError(
        f"augment: pad and cutout must be >= 0, got {pad} and {cutout}"
    )
  batch, height, width, channels = images.shape
  crop_key, flip_key, cutout_key = jax.random.split(key, 3)
  if pad:
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = jax.random.randint(crop_key, (batch, 2), 0, 2 * pad + 1)
    crop = lambda image, dy, dx: jax.lax.dynamic_slice(
        image, (dy, dx, 0), (height, width, channels)
    )
    images = jax.vmap(crop)(padded, offsets[:, 0], offsets[:, 1])
  if flip:
    flipped = jax.random.bernoulli(flip_key, 0.5, (batch, 1, 1, 1))
    images = jnp.where(flipped, images[:, :, ::-1], images)
  if cutout:
    centers = jax.random.randint(
        cutout_key, (batch, 2), 0, jnp.array([[height, width]])
    )
    rows = jnp.arange(height)[None, :, None]
    cols = jnp.arange(width)[None, None, :]
    cy, cx = centers[:, 0, None, None], centers[:, 1, None, None]
    half = cutout // 2
    inside = (
        (rows >= jnp.clip(cy - half, 0, height))
        & (rows < jnp.clip(cy + half, 0, height))
        & (cols >= jnp.clip(cx - half, 0, width))
        & (cols < jnp.clip(cx + half, 0, width))
    )
    images = jnp.where(inside[..., None], jnp.zeros((), images.dtype), images)
  return images


def epoch_permutation(
    num_examples: int, epoch: int, *, seed: int
) -> np.ndarray:
  """The example order of one epoch, a pure function of ``(seed, epoch)``.

  A run resumed at ``(epoch, step)`` recomputes this permutation and takes
  batch ``step`` from it, so it sees exactly the batches of an uninterrupted
  run: batch ``step`` is ``order[step * batch_size:(step + 1) * batch_size]``.

  Args:
    num_examples: dataset size.
    epoch: epoch number, >= 0.
    seed: run seed, >= 0.

  Returns:
    int32 permutation of ``range(num_examples)``.

  Example:
    >>> order = epoch_permutation(10, 3, seed=0)
    >>> sorted(order.tolist()) == list(range(10))
    True
  """
  if num_examples < 0 or epoch < 0 or seed < 0:
    raise UserError(
        f"epoch_permutation: num_examples, epoch and seed must be >= 0, got"
        f" {num_examples}, {epoch}, {seed}"
    )
  rng = np.random.Generator(np.random.PCG64([seed, epoch]))
  return rng.permutation(num_examples).astype(np.int32)


def num_batches(n: int, batch_size: int, drop_remainder: bool = True) -> int:
  """The number of batches of ``batch_size`` in ``n`` examples.

  Args:
    n: number of examples.
    batch_size: examples per batch, > 0.
    drop_remainder: drop a last, partial batch (the training default).

  Returns:
    ``n // batch_size``, or ``ceil(n / batch_size)`` when keeping the remainder.

  Example:
    >>> num_batches(10, 4), num_batches(10, 4, drop_remainder=False)
    (2, 3)
  """
  if batch_size <= 0:
    raise UserError(f"batch size must be positive, got {batch_size}")
  return n // batch_size if drop_remainder else -(-n // batch_size)


def shard_for_process(dataset, process_index: int, process_count: int):
  """This process's contiguous shard of a batch order or of a dataset.

  Process ``i`` of ``P`` gets items ``[i * k, (i + 1) * k)`` with
  ``k = len(dataset) // P``; the last ``len(dataset) % P`` items are dropped so
  that every process runs the same number of steps. Shard a global batch's
  indices (``order[step * B:(step + 1) * B]`` with ``B`` divisible by ``P``)
  to get this process's part of the batch, or an ``ArrayDataset`` to keep only
  this process's examples in memory. Pass ``jax.process_index()`` and
  ``jax.process_count()``.

  Args:
    dataset: a 1-D index array (or any array, sliced on axis 0) or an
      ``ArrayDataset``.
    process_index: this process, in ``[0, process_count)``.
    process_count: number of processes, > 0.

  Returns:
    The shard, of the same kind as ``dataset``.

  Example:
    >>> shard_for_process(np.arange(8), 1, 4)
    array([2, 3])
  """
  if process_count <= 0 or not 0 <= process_index < process_count:
    raise UserError(
        f"process index {process_index} is not in [0, {process_count})"
    )
  per_process = len(dataset) // process_count
  sl = slice(process_index * per_process, (process_index + 1) * per_process)
  if isinstance(dataset, ArrayDataset):
    return dataclasses.replace(
        dataset, images=dataset.images[sl], labels=dataset.labels[sl]
    )
  return dataset[sl]


def prepare(name: str, data_dir: str) -> str:
  """Downloads CIFAR and writes it as TFDS ArrayRecord files, without TF.

  Fetches the official python-pickle tarball from
  https://www.cs.toronto.edu/~kriz/ into ``data_dir/downloads`` (kept, and
  reused when its md5 matches), checks its md5, and writes the TFDS dataset
  (``data_dir/cifar10/3.0.2/...``) that ``load(name, data_dir=data_dir)``
  reads. A dataset already prepared there is left as it is.

  Args:
    name: ``'cifar10'`` or ``'cifar100'``.
    data_dir: TFDS data directory to write into.

  Returns:
    The directory holding the prepared dataset.

  Raises:
    UserError: another name, a failed download or an md5 mismatch.

  Example:
    >>> prepare('cifar10', '/data/tfds')  # doctest: +SKIP
    '/data/tfds/cifar10/3.0.2'
  """
  if name not in _CIFAR:
    raise UserError(
        f"dnas prepare knows {', '.join(_CIFAR)}, not {name!r}; "
        + _how_to_prepare(name, data_dir)
    )
  data_dir = os.path.expanduser(data_dir)
  _import_tfds(name)
  builder = _pickle_builder_cls(name)(
      data_dir=data_dir, file_format="array_record"
  )
  if builder.is_prepared():
    return os.fspath(builder.data_dir)
  source = _CIFAR[name]
  tarball = os.path.join(data_dir, "downloads", source.url.rsplit("/", 1)[-1])
  if not (os.path.exists(tarball) and _md5(tarball) == source.md5):
    _download(source.url, tarball)
    if _md5(tarball) != source.md5:
      os.remove(tarball)
      raise UserError(
          f"{source.url} downloaded with a wrong md5 (expected {source.md5});"
          " run the command again"
      )
  return _prepare_from_tarball(name, tarball, data_dir)


def _md5(path: str) -> str:
  digest = hashlib.md5()
  with open(path, "rb") as f:
    for block in iter(functools.partial(f.read, 1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _download(url: str, path: str) -> None:
  """Streams ``url`` to ``path`` through a temporary file, with a timeout."""
  import tqdm

  os.makedirs(os.path.dirname(path), exist_ok=True)
  partial = path + ".partial"
  try:
    with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
      total = int(response.headers.get("Content-Length") or 0) or None
      with open(partial, "wb") as f, tqdm.tqdm(
          total=total, unit="B", unit_scale=True, desc=os.path.basename(path)
      ) as progress:
        for block in iter(functools.partial(response.read, 1 << 20), b""):
          f.write(block)
          progress.update(len(block))
  except (urllib.error.URLError, OSError) as err:
    if os.path.exists(partial):
      os.remove(partial)
    reason = getattr(err, "reason", err)
    raise UserError(
        f"cannot download {url} ({reason}); download it by hand to {path} and"
        " run the command again"
    ) from None
  shutil.move(partial, path)


def _examples_from_cifar_tarball(
    path: str,
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, list[str]]]:
  """Reads a CIFAR python-pickle tarball into arrays, in the tarball's order.

  Members are read in memory (nothing is extracted). The layout is that of
  ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``: pickled dicts with
  a ``(N, 3072)`` uint8 ``data`` row-major in (channel, row, column), labels,
  and a meta file with the class names.

  Args:
    path: the tarball.

  Returns:
    ``(splits, label_names)``: ``splits[split][feature]`` is ``image``
    ``(N, 32, 32, 3)`` uint8 or an int64 label array (``label``, and
    ``coarse_label`` for CIFAR-100); ``label_names[feature]`` lists the class
    names of each label feature.
  """
  with tarfile.open(path, "r:gz") as tar:
    members = {m.name: m for m in tar.getmembers() if m.isfile()}
    layout = next(
        (s for s in _CIFAR.values() if f"{s.folder}/{s.meta}" in members), None
    )
    if layout is None:
      raise UserError(f"{path} is not a CIFAR-10/100 python tarball")

    def unpickle(member: str) -> dict[str, object]:
      raw = tar.extractfile(members[f"{layout.folder}/{member}"]).read()
      # The tarballs were pickled by Python 2: keys and names are bytes.
      loaded = pickle.loads(raw, encoding="bytes")
      return {
          key.decode() if isinstance(key, bytes) else key: value
          for key, value in loaded.items()
      }

    meta = unpickle(layout.meta)
    label_names = {
        feature: [n.decode() if isinstance(n, bytes) else n for n in meta[key]]
        for feature, key in layout.name_keys.items()
    }
    splits = {}
    for split, files in layout.splits.items():
      batches = [unpickle(f) for f in files]
      data = np.concatenate([np.asarray(b["data"], np.uint8) for b in batches])
      split_arrays = {
          "image": data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()
      }
      for feature, key in layout.label_keys.items():
        split_arrays[feature] = np.concatenate(
            [np.asarray(b[key], np.int64) for b in batches]
        )
      splits[split] = split_arrays
  return splits, label_names


def _png(image: np.ndarray) -> bytes:
  from PIL import Image

  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  return buffer.getvalue()


@functools.cache
def _pickle_builder_cls(name: str):
  """TFDS's own CIFAR builder, fed from the pickle tarball, not a download.

  Same name, version, features and example keys as TFDS's ``cifar10`` /
  ``cifar100`` (so the same stored order), but images are PNG-encoded with
  Pillow rather than TensorFlow, and nothing is downloaded by TFDS.
  """
  from tensorflow_datasets.image_classification import cifar

  base = {"cifar10": cifar.Cifar10, "cifar100": cifar.Cifar100}[name]
  builder_name = name

  class PickleCifar(base, skip_registration=True):
    name = builder_name
    tarball: str | None = None

    def _split_generators(self, dl_manager):
      del dl_manager  # The tarball is read directly.
      splits, label_names = _examples_from_cifar_tarball(self.tarball)
      for feature, names in label_names.items():
        self.info.features[feature].names = names
      return {
          split: self._generate_from_arrays(f"{split}_", arrays)
          for split, arrays in splits.items()
      }

    def _generate_from_arrays(
        self, id_prefix: str, arrays: dict[str, np.ndarray]
    ) -> Iterator[tuple[int, dict[str, object]]]:
      label_features = [f for f in arrays if f != "image"]
      for index, image in enumerate(arrays["image"]):
        record = {f: int(arrays[f][index]) for f in label_features}
        record["id"] = f"{id_prefix}{index:05d}"
        record["image"] = _png(image)
        yield index, record

  PickleCifar.__name__ = PickleCifar.__qualname__ = f"PickleCifar_{name}"
  return PickleCifar


def _prepare_from_tarball(name: str, tarball: str, data_dir: str) -> str:
  """Writes TFDS ArrayRecord files for ``name`` from a local pickle tarball."""
  tfds = _import_tfds(name)
  builder = _pickle_builder_cls(name)(
      data_dir=data_dir, file_format="array_record"
  )
  builder.tarball = tarball
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(
          compute_stats=tfds.download.ComputeStatsMode.SKIP,
          try_download_gcs=False,
      )
  )
  return os.fspath(builder.data_dir)
