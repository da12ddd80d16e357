"""Configs as code: dataclasses, experiment files and command-line overrides.

An experiment is a Python file in ``experiments/`` defining
``get_config(tiny: bool = False)`` that returns a config dataclass
(``SearchConfig`` for ``dnas search``, ``TrainConfig`` for ``dnas train``).
``tiny=True`` shrinks it to a run that finishes on a laptop CPU. Any field can
be overridden on the command line as ``key=value``:

  dnas search --config experiments/darts_cifar10_search_second_order.py \\
      epochs=10 batch_size=32 --workdir runs/short

Values are parsed by the field's type (``primitives=none,skip_connect``
gives a tuple; ``dataset=none`` gives None). An unknown key is an error
that lists the valid ones.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import os
import types
import typing
from typing import Any

from dnas.errors import UserError

__all__ = [
    "SearchConfig",
    "TrainConfig",
    "load_config",
    "apply_overrides",
    "to_dict",
    "from_dict",
    "tiny_search",
    "tiny_train",
    "TINY_PRIMITIVES",
    "DEFAULT_EPOCHS",
    "search_epochs",
]

_PRIMITIVES = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)


@dataclasses.dataclass(frozen=True)
class SearchConfig:
  """Everything a search run depends on. Defaults: the embedded digits run.

  The DARTS paper's values (Liu et al. 2019, Sec. 3.1 and A.1) are the
  defaults of the optimiser fields; ``experiments/darts_cifar10_search_*.py``
  sets the rest (50 epochs, batch 64, 16 channels, 8 cells).
  """

  # What to search.
  strategy: str = "darts"
  dataset: str | None = None  # None: scikit-learn's bundled digits
  data_dir: str | None = None
  train_portion: float = 0.5  # first half trains weights, second half alphas
  seed: int = 0
  # Supernet.
  init_channels: int = 8
  layers: int = 3
  # Two nodes per cell keep the default runs near a minute (DARTS) and a few
  # minutes (ENAS) on two CPU cores; four nodes, the DARTS cell, take the
  # DARTS run to 1.5 minutes (45 s of them compiling) and an ENAS epoch from
  # about 1.5 to 6 seconds (compile 50 -> 86 s). The experiments use 4 and 4.
  steps: int = 2
  multiplier: int = 2
  stem_multiplier: int = 3
  primitives: tuple[str, ...] = _PRIMITIVES
  relaxation: str = "softmax"
  alpha_init_scale: float = 1e-3  # 0 gives the paper's stated zeros
  # Schedule. None: the strategy's default for the digits run (DEFAULT_EPOCHS:
  # DARTS 6; ENAS 100, since each step trains one sampled path and an epoch
  # costs about a second once compiled).
  epochs: int | None = None
  batch_size: int = 64
  # Weights: SGD, cosine-annealed learning rate (per epoch, as the reference).
  w_lr: float = 0.025
  w_lr_min: float = 0.001
  w_momentum: float = 0.9
  w_weight_decay: float = 3e-4
  grad_clip: float = 5.0
  # Alphas: Adam with L2 weight decay.
  a_lr: float = 3e-4
  a_beta1: float = 0.5
  a_beta2: float = 0.999
  a_weight_decay: float = 1e-3
  # DARTS hypergradient: first_order, second_order (exact), finite_difference.
  hypergradient: str = "first_order"
  # Augmentation (on the device): random crop after padding, horizontal flip.
  crop_padding: int = 1
  flip: bool = False
  # ENAS (used when strategy == 'enas').
  enas_lstm_size: int = 64
  enas_lr: float = 3.5e-3
  enas_baseline_decay: float = 0.99
  enas_entropy_weight: float = 1e-4
  enas_tanh_constant: float = 1.1
  enas_temperature: float = 5.0
  enas_controller_steps: int = 10  # per epoch (ENAS: 30; experiments/ sets it)
  enas_num_aggregate: int = 5  # samples per controller update (ENAS: 10)
  enas_derive_samples: int = 32
  # Execution.
  steps_per_call: int = 1  # search steps per compiled call (a lax.scan)
  depthwise: str = "auto"  # auto, shift_vjp, shift or native (ops.depthwise_conv2d)
  compute_dtype: str = "float32"  # or bfloat16 (alphas and softmax stay f32)
  scan_edges: bool = True  # same-shaped edges as one lax.scan, weights stacked (Cell)
  remat: bool = True  # recompute each edge in the backward pass (Cell)
  checkpoint_every_epochs: int = 1
  keep_checkpoints: int = 2
  max_steps_per_epoch: int = 0  # 0: the whole split; >0 caps it (smoke runs)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Final-network training with the DARTS evaluation recipe.

  The optimiser and regularisation defaults are the paper's CIFAR-10
  evaluation (Liu et al. 2019, Sec. 3.2 and A.2): SGD lr 0.025 cosine to 0,
  momentum 0.9, weight decay 3e-4, batch 96, cutout 16, drop-path 0.2 ramped
  linearly from 0, auxiliary weight 0.4, gradient clip 5. Fields left at None
  are filled from the dataset by ``dnas.train.resolve_config``: 600 epochs,
  36 channels, 20 cells, pad-4 crop and flips on 32-pixel images (CIFAR); on
  the embedded 8x8 digits the network is 16 channels and 8 cells, trained for
  15 epochs, with the crop and cutout scaled to the image size and no flips
  (a flipped digit is another glyph). ``experiments/`` sets every field
  explicitly for the published runs.
  """

  genotype: str | None = None  # zoo name or JSON file; --genotype overrides
  dataset: str | None = None  # None: scikit-learn's bundled digits
  data_dir: str | None = None
  seed: int = 0
  init_channels: int | None = None
  layers: int | None = None
  auxiliary: bool = True
  auxiliary_weight: float = 0.4
  drop_path_prob: float = 0.2  # ramped linearly from 0 over training
  epochs: int | None = None
  batch_size: int = 96
  lr: float = 0.025
  lr_min: float = 0.0
  lr_schedule: str = "cosine"  # cosine, or exponential (ImageNet: x0.97/epoch)
  lr_decay: float = 0.97
  momentum: float = 0.9
  weight_decay: float = 3e-4
  grad_clip: float = 5.0
  label_smoothing: float = 0.0
  cutout: int | None = None
  crop_padding: int | None = None
  flip: bool | None = None
  steps_per_call: int = 1
  depthwise: str = "auto"
  compute_dtype: str = "float32"
  checkpoint_every_epochs: int = 1
  keep_checkpoints: int = 2
  max_steps_per_epoch: int = 0  # 0: the whole split; >0 caps it (smoke runs)
  max_eval_examples: int = 0  # 0: the whole test split; >0 caps it (smoke runs)

DEFAULT_EPOCHS = {"darts": 6, "enas": 100}


def search_epochs(config: SearchConfig) -> int:
  """``config.epochs``, or the strategy's default (``DEFAULT_EPOCHS``) when None."""
  if config.epochs is not None:
    return config.epochs
  return DEFAULT_EPOCHS.get(config.strategy, DEFAULT_EPOCHS["darts"])


# The tiny variants of experiments/ keep an experiment's recipe (optimiser,
# schedule, hypergradient, regularisation) and swap the data and sizes for a
# CPU smoke run on the embedded digits: a few steps, a small network, native
# depthwise convolutions (they compile fastest).
TINY_PRIMITIVES = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3")


def tiny_search(config: SearchConfig) -> SearchConfig:
  """``config`` shrunk to seconds of CPU on the digits, recipe unchanged."""
  return dataclasses.replace(
      config,
      dataset=None,
      data_dir=None,
      init_channels=4,
      layers=2,
      steps=2,
      multiplier=2,
      primitives=TINY_PRIMITIVES,
      epochs=2,
      batch_size=16,
      crop_padding=1,
      flip=False,
      max_steps_per_epoch=2,
      depthwise="native",
  )


def tiny_train(config: TrainConfig) -> TrainConfig:
  """``config`` shrunk to seconds of CPU on the digits, recipe unchanged."""
  return dataclasses.replace(
      config,
      dataset=None,
      data_dir=None,
      init_channels=4,
      layers=3,
      epochs=2,
      batch_size=16,
      crop_padding=1,
      cutout=4,
      flip=False,
      max_steps_per_epoch=2,
      max_eval_examples=64,
      depthwise="native",
  )


def _field_types(cls) -> dict[str, Any]:
  hints = typing.get_type_hints(cls)
  return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _parse_value(key: str, text: str, annotation: Any) -> Any:
  """Parses ``text`` as the field's annotated type."""
  origin = typing.get_origin(annotation)
  args = typing.get_args(annotation)
  if origin in (typing.Union, types.UnionType):
    if text.lower() in ("none", "null", ""):
      if type(None) in args:
        return None
    inner = [a for a in args if a is not type(None)]
    return _parse_value(key, text, inner[0])
  if origin is tuple:
    items = [t.strip() for t in text.split(",") if t.strip()]
    return tuple(_parse_value(key, item, args[0]) for item in items)
  try:
    if annotation is bool:
      lowered = text.lower()
      if lowered in ("1", "true", "yes", "on"):
        return True
      if lowered in ("0", "false", "no", "off"):
        return False
      raise ValueError(text)
    if annotation is int:
      return int(text)
    if annotation is float:
      return float(text)
  except ValueError:
    raise UserError(
        f"config value {key}={text!r} is not a valid {annotation.__name__}"
    ) from None
  return text


def _unknown_key(key: str, cls) -> UserError:
  names = [f.name for f in dataclasses.fields(cls)]
  close = difflib.get_close_matches(key, names, n=3)
  hint = f"; did you mean {', '.join(close)}?" if close else ""
  return UserError(
      f"unknown config key {key!r}{hint} (valid keys: {', '.join(names)})"
  )


def apply_overrides(config, overrides: list[str] | dict[str, Any]):
  """Returns ``config`` with ``key=value`` overrides applied.

  Args:
    config: a config dataclass.
    overrides: strings ``"key=value"`` (parsed by the field's type) or a dict
      of already-typed values.

  Returns:
    A new config of the same class.

  Example:
    >>> apply_overrides(SearchConfig(), ["epochs=2", "dataset=cifar10"]).epochs
    2
  """
  cls = type(config)
  hints = _field_types(cls)
  updates = {}
  if isinstance(overrides, dict):
    for key, value in overrides.items():
      if key not in hints:
        raise _unknown_key(key, cls)
      updates[key] = value
  else:
    for item in overrides:
      if "=" not in item:
        raise UserError(
            f"override {item!r} is not key=value; e.g. epochs=10 (see --help)"
        )
      key, text = item.split("=", 1)
      key = key.strip().replace("-", "_")
      if key not in hints:
        raise _unknown_key(key, cls)
      updates[key] = _parse_value(key, text.strip(), hints[key])
  return dataclasses.replace(config, **updates)


def load_config(path: str | None, cls, *, tiny: bool = False):
  """Loads an experiment file's ``get_config(tiny=...)``, or the defaults.

  Args:
    path: a Python file in ``experiments/`` (or anywhere), or None for
      ``cls()`` (shrunk by ``tiny_search``/``tiny_train`` when ``tiny``).
    cls: the expected config class (``SearchConfig`` or ``TrainConfig``).
    tiny: ask the experiment for its small CPU variant.

  Returns:
    An instance of ``cls``.
  """
  if path is None:
    if not tiny:
      return cls()
    return tiny_search(cls()) if cls is SearchConfig else tiny_train(cls())
  if not os.path.isfile(path):
    raise UserError(f"config file {path!r} does not exist; see experiments/ for examples")
  spec = importlib.util.spec_from_file_location("dnas_experiment", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as error:  # a user's file: report, don't crash
    raise UserError(
        f"config file {path!r} failed to load: {type(error).__name__}: {error}"
    ) from None
  if not hasattr(module, "get_config"):
    raise UserError(f"config file {path!r} defines no get_config(tiny=False)")
  try:
    config = module.get_config(tiny=tiny)
  except UserError:
    raise
  except Exception as error:
    raise UserError(
        f"get_config() in {path!r} raised {type(error).__name__}: {error}"
    ) from None
  if not isinstance(config, cls):
    raise UserError(
        f"get_config() in {path!r} returned {type(config).__name__}, expected"
        f" {cls.__name__}; use the matching command (dnas search / dnas train)"
    )
  return config


def to_dict(config) -> dict[str, Any]:
  """A JSON-ready dict of a config (tuples become lists)."""
  return json.loads(json.dumps(dataclasses.asdict(config)))


def from_dict(cls, data: dict[str, Any]):
  """Inverse of ``to_dict``; unknown keys are an error."""
  hints = _field_types(cls)
  values = {}
  for key, value in data.items():
    if key not in hints:
      raise _unknown_key(key, cls)
    if isinstance(value, list):
      value = tuple(value)
    values[key] = value
  return cls(**values)
