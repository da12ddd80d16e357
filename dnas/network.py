"""The final, standalone network built from a ``Genotype``.

This is the network the DARTS paper trains from scratch after the search
(Liu et al., ICLR 2019, section 3.1 and the reference ``cnn/model.py``): a
stem, ``layers`` cells whose ops are fixed by a genotype, reduction cells at
one and two thirds of the depth, an optional auxiliary head after the second
reduction, global average pooling and a linear classifier. It depends only on
``ops`` and ``genotype``, so it can be deployed without the search code.

Training and evaluation follow NNX's modes: ``model.train()`` turns on batch
statistics, drop-path and the auxiliary head; ``model.eval()`` turns them off
(``nnx.view(model, deterministic=True, use_running_average=True)`` does the
same without mutating ``model``).

  >>> net = build_network(genotype, 'cifar10', rngs=nnx.Rngs(0))
  >>> logits, logits_aux = net(images, drop_prob=jnp.float32(0.2))
  >>> net.eval(); logits, _ = net(images)   # logits_aux is None in eval mode
"""

from __future__ import annotations

from collections.abc import Callable
import math
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp

from dnas import ops
from dnas.errors import UserError
from dnas.genotype import Genotype

__all__ = [
    "DropPath",
    "Cell",
    "AuxiliaryHeadCIFAR",
    "AuxiliaryHeadImageNet",
    "NetworkCIFAR",
    "NetworkImageNet",
    "DATASETS",
    "build_network",
]


def _torch_linear(in_features: int, out_features: int, *, rngs: nnx.Rngs):
  """``nnx.Linear`` with PyTorch's default init (uniform +-1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(in_features)

  def bias_init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return nnx.Linear(
      in_features,
      out_features,
      kernel_init=ops.torch_conv_init,
      bias_init=bias_init,
      rngs=rngs,
  )


def _reduced(size: int) -> int:
  """Spatial size after any stride-2 op of the space (ceil(size / 2))."""
  return (size + 1) // 2


def _global_avg_pool(x: jax.Array) -> jax.Array:
  return jnp.mean(x, axis=(1, 2))


class DropPath(nnx.Module):
  """Drops a whole sample's path with probability ``drop_prob`` (training only).

  As in the reference's ``utils.drop_path``: a per-sample Bernoulli keep mask
  of shape (N, 1, 1, 1), the kept samples scaled by ``1 / keep_prob`` so the
  expectation is unchanged. Its randomness comes from the ``'dropout'`` stream
  of the ``nnx.Rngs`` given at construction (forked, so deterministic given the
  seed and advanced in place under ``nnx.jit``), or from an explicit ``key``.

  Args:
    rngs: the ``nnx.Rngs`` whose ``'dropout'`` stream (or ``'default'``) is
      forked; without either, a ``key`` must be passed at call time.
    deterministic: if True, the input is returned unchanged (eval mode).

  Example:
    >>> drop = DropPath(rngs=nnx.Rngs(dropout=0))
    >>> drop(jnp.ones((4, 2, 2, 3)), 0.5).shape
    (4, 2, 2, 3)
  """

  def __init__(self, *, rngs: nnx.Rngs | None = None, deterministic: bool = False):
    self.deterministic = deterministic
    stream = None
    if rngs is not None:
      try:
        stream = rngs["dropout"].fork()
      except KeyError:
        stream = None
    self.rngs = nnx.data(stream)

  def _next_key(self) -> jax.Array:
    # What ``RngStream.__call__`` does, but writing the count with
    # ``set_value``: its ``count[...] += 1`` reads ``.sharding`` of a tracer,
    # whose error message walks the whole trace, so tracing a deep network
    # became quadratic in its size.
    stream = self.rngs
    count = stream.count.get_value()
    stream.count.set_value(count + 1)
    return jax.random.fold_in(stream.key.get_value(), count)

  def set_view(self, deterministic: bool | None = None):
    """Sets the mode for ``nnx.view``; True disables drop-path."""
    if deterministic is not None:
      self.deterministic = deterministic

  def __call__(
      self, x: jax.Array, drop_prob, *, key: jax.Array | None = None
  ) -> jax.Array:
    """Applies drop-path.

    Args:
      x: a batch of shape (N, ...).
      drop_prob: probability of dropping each sample; a Python float or a
        (traced) scalar array, so changing it per epoch does not recompile.
      key: an explicit PRNG key; overrides the module's stream.

    Returns:
      ``x`` with dropped samples zeroed and kept samples scaled by
      ``1 / (1 - drop_prob)``; ``x`` itself in deterministic mode or when
      ``drop_prob`` is the Python number 0.
    """
    if self.deterministic:
      return x
    if isinstance(drop_prob, (int, float)) and drop_prob == 0:
      return x
    if key is None:
      if self.rngs is None:
        raise UserError(
            "drop-path needs randomness: build with nnx.Rngs(..., dropout=seed)"
            " or pass key= to the call"
        )
      key = self._next_key()
    keep_prob = 1.0 - jnp.asarray(drop_prob, jnp.float32)
    mask_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(key, keep_prob, mask_shape)
    return x * (mask.astype(x.dtype) / keep_prob.astype(x.dtype))


class Cell(nnx.Module):
  """A final-network cell: the genotype's ops on a fixed DAG.

  Node ``i`` sums two ops, each applied to one earlier state (the two
  preprocessed cell inputs or an earlier node), as listed in the genotype. In a
  reduction cell the ops reading the two cell inputs have stride 2. The output
  concatenates the genotype's ``concat`` states along channels (NHWC axis -1).
  In training mode drop-path is applied to the output of every op that is not
  an identity.

  Args:
    genotype: the cell structures (``normal``/``reduce`` and their concats).
    C_prev_prev: channels of the input from two cells back.
    C_prev: channels of the input from the previous cell.
    C: channels of every node.
    reduction: use the reduction genotype and halve the spatial size.
    reduction_prev: the previous cell halved the size, so the older input is
      reduced with a ``FactorizedReduce``.
    rngs: parameter keys (``params``) and the drop-path stream (``dropout``).

  Example:
    >>> cell = Cell(DARTS_V2, 48, 48, 16, False, False, rngs=nnx.Rngs(0))
    >>> cell(s0, s1, 0.2).shape   # s0, s1: (N, H, W, 48)
    (N, H, W, 64)
  """

  def __init__(
      self,
      genotype: Genotype,
      C_prev_prev: int,
      C_prev: int,
      C: int,
      reduction: bool,
      reduction_prev: bool,
      *,
      rngs: nnx.Rngs,
  ):
    if reduction_prev:
      self.preprocess0 = ops.FactorizedReduce(C_prev_prev, C, True, rngs=rngs)
    else:
      self.preprocess0 = ops.ReLUConvBN(C_prev_prev, C, 1, 1, 0, True, rngs=rngs)
    self.preprocess1 = ops.ReLUConvBN(C_prev, C, 1, 1, 0, True, rngs=rngs)
    edges = genotype.reduce if reduction else genotype.normal
    concat = genotype.reduce_concat if reduction else genotype.normal_concat
    if len(edges) % 2:
      raise UserError(
          f"a genotype cell needs two edges per node, got {len(edges)} edges"
      )
    self.reduction = reduction
    self.steps = len(edges) // 2
    self.indices = tuple(int(index) for _, index in edges)
    self.concat = tuple(int(i) for i in concat)
    self.multiplier = len(self.concat)
    for edge, index in enumerate(self.indices):
      if not 0 <= index < 2 + edge // 2:
        raise UserError(
            f"edge {edge} of the genotype reads state {index}, which is not"
            f" yet computed; inputs must be < {2 + edge // 2}"
        )
    layers = []
    for name, index in edges:
      if name not in ops.OPS:
        raise UserError(
            f"unknown op {name!r} in genotype; known ops: {', '.join(ops.OPS)}"
        )
      stride = 2 if reduction and index < 2 else 1
      layers.append(ops.OPS[name](C, stride, True, rngs=rngs))
    self.ops = nnx.List(layers)
    self.drop_edge = tuple(not isinstance(op, ops.Identity) for op in layers)
    self.drop_path = DropPath(rngs=rngs)

  def __call__(
      self,
      s0: jax.Array,
      s1: jax.Array,
      drop_prob=0.0,
      *,
      key: jax.Array | None = None,
  ) -> jax.Array:
    """Runs the cell.

    Args:
      s0: output of the cell two back, (N, H0, W0, C_prev_prev).
      s1: output of the previous cell, (N, H, W, C_prev).
      drop_prob: drop-path probability (float or scalar array).
      key: optional explicit drop-path key (folded with the edge index).

    Returns:
      (N, H', W', multiplier * C), with H' = ceil(H / 2) in a reduction cell.
    """
    states = [self.preprocess0(s0), self.preprocess1(s1)]
    for node in range(self.steps):
      total = None
      for edge in (2 * node, 2 * node + 1):
        h = self.ops[edge](states[self.indices[edge]])
        if self.drop_edge[edge]:
          edge_key = None if key is None else jax.random.fold_in(key, edge)
          h = self.drop_path(h, drop_prob, key=edge_key)
        total = h if total is None else total + h
      states.append(total)
    return jnp.concatenate([states[i] for i in self.concat], axis=-1)


class _AuxiliaryHead(nnx.Module):
  """ReLU, average pool, 1x1 conv 128, BN, ReLU, 2x2 conv 768, [BN], ReLU, linear.

  The reference assumes its input size (8x8 on CIFAR, 7x7 on ImageNet) so that
  the pool and the 2x2 conv leave 1x1. Here the head degrades gracefully on
  other sizes: the pool (``pool_stride``, 5x5, no padding) runs only on inputs
  of at least 5x5 (smaller ones, e.g. the 2x2 map of 8x8 digits, are already
  as small as the reference's pooled map); the 768-channel conv is 2x2 unless
  the map is 1x1, then 1x1; whatever spatial extent remains is averaged before
  the classifier. On the reference sizes this is exactly the reference head.
  """

  def __init__(
      self,
      C: int,
      num_classes: int,
      input_size: int,
      pool_stride: int,
      bn_after_768: bool,
      *,
      rngs: nnx.Rngs,
  ):
    self.pool_stride = pool_stride
    pooled = (input_size - 5) // pool_stride + 1 if input_size >= 5 else input_size
    kernel = 2 if pooled >= 2 else 1
    self.conv1 = ops.Conv(C, 128, 1, rngs=rngs)
    self.bn1 = ops.BatchNorm(128, True, rngs=rngs)
    self.conv2 = ops.Conv(128, 768, kernel, rngs=rngs)
    self.bn2 = ops.BatchNorm(768, True, rngs=rngs) if bn_after_768 else None
    self.classifier = _torch_linear(768, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps a feature map (N, H, W, C) to logits (N, num_classes)."""
    x = jax.nn.relu(x)
    if x.shape[1] >= 5 and x.shape[2] >= 5:
      # No padding, so count_include_pad=False changes nothing: a plain mean.
      x = jax.lax.reduce_window(
          x,
          0.0,
          jax.lax.add,
          (1, 5, 5, 1),
          (1, self.pool_stride, self.pool_stride, 1),
          "VALID",
      ) / 25.0
    x = jax.nn.relu(self.bn1(self.conv1(x)))
    x = self.conv2(x)
    if self.bn2 is not None:
      x = self.bn2(x)
    x = jax.nn.relu(x)
    return self.classifier(_global_avg_pool(x))


class AuxiliaryHeadCIFAR(_AuxiliaryHead):
  """The auxiliary classifier of the CIFAR network (reference input 8x8).

  ReLU, AvgPool 5 stride 3, 1x1 conv 128, BN, ReLU, 2x2 conv 768, BN, ReLU,
  linear; see ``_AuxiliaryHead`` for how it adapts to other input sizes.

  Args:
    C: input channels.
    num_classes: classes predicted.
    input_size: spatial size of its input (8 for 32x32 CIFAR images).
    rngs: parameter keys.

  Example:
    >>> head = AuxiliaryHeadCIFAR(576, 10, 8, rngs=nnx.Rngs(0))
    >>> head(jnp.ones((2, 8, 8, 576))).shape
    (2, 10)
  """

  def __init__(self, C: int, num_classes: int, input_size: int = 8, *, rngs):
    super().__init__(C, num_classes, input_size, 3, True, rngs=rngs)


class AuxiliaryHeadImageNet(_AuxiliaryHead):
  """The auxiliary classifier of the ImageNet network (reference input 7x7).

  ReLU, AvgPool 5 stride 2, 1x1 conv 128, BN, ReLU, 2x2 conv 768, ReLU,
  linear. There is no BN after the 768-channel conv, as in the reference
  (whose paper experiments ran without it).

  Args:
    C: input channels.
    num_classes: classes predicted.
    input_size: spatial size of its input (7 for 224x224 images).
    rngs: parameter keys.

  Example:
    >>> head = AuxiliaryHeadImageNet(768, 1000, 7, rngs=nnx.Rngs(0))
    >>> head(jnp.ones((2, 7, 7, 768))).shape
    (2, 1000)
  """

  def __init__(self, C: int, num_classes: int, input_size: int = 7, *, rngs):
    super().__init__(C, num_classes, input_size, 2, False, rngs=rngs)


class _Network(nnx.Module):
  """Cells, auxiliary head and classifier shared by the two networks."""

  def _build_cells(
      self,
      genotype,
      C,
      C_stem_prev_prev,
      C_stem_prev,
      size,
      layers,
      reduction_prev,
      auxiliary,
      head_cls,
      num_classes,
      rngs,
  ):
    if layers < 1:
      raise UserError(f"layers must be at least 1, got {layers}")
    self.layers = layers
    self.auxiliary = auxiliary
    self.aux_position = 2 * layers // 3
    self.deterministic = False
    C_prev_prev, C_prev, C_curr = C_stem_prev_prev, C_stem_prev, C
    cells = []
    aux_channels = aux_size = None
    for i in range(layers):
      reduction = i in (layers // 3, 2 * layers // 3)
      if reduction:
        C_curr *= 2
        size = _reduced(size)
      cell = Cell(
          genotype, C_prev_prev, C_prev, C_curr, reduction, reduction_prev,
          rngs=rngs,
      )
      cells.append(cell)
      reduction_prev = reduction
      C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
      if i == self.aux_position:
        aux_channels, aux_size = C_prev, size
    self.cells = nnx.List(cells)
    self.auxiliary_head = (
        head_cls(aux_channels, num_classes, aux_size, rngs=rngs)
        if auxiliary
        else None
    )
    self.classifier = _torch_linear(C_prev, num_classes, rngs=rngs)

  def set_view(self, deterministic: bool | None = None):
    """Sets the mode for ``nnx.view``; True disables the auxiliary head."""
    if deterministic is not None:
      self.deterministic = deterministic

  def _run_cells(self, s0, s1, drop_prob, key):
    logits_aux = None
    for i, cell in enumerate(self.cells):
      cell_key = None if key is None else jax.random.fold_in(key, i)
      s0, s1 = s1, cell(s0, s1, drop_prob, key=cell_key)
      if i == self.aux_position and self.auxiliary_head is not None:
        if not self.deterministic:
          logits_aux = self.auxiliary_head(s1)
    logits = self.classifier(_global_avg_pool(s1))
    return logits, logits_aux


class NetworkCIFAR(_Network):
  """The DARTS network for small images (CIFAR-10/100, digits, ...).

  Stem: 3x3 conv to ``3 * C`` channels and BN. Then ``layers`` cells, the ones
  at ``layers // 3`` and ``2 * layers // 3`` reducing (channels doubled, size
  halved); the auxiliary head reads the output of cell ``2 * layers // 3`` in
  training mode; global average pooling and a linear classifier.

  Args:
    genotype: the normal and reduction cells.
    C: initial channels per node (36 for the paper's CIFAR-10 model).
    num_classes: classes predicted.
    layers: number of cells (20 in the paper).
    auxiliary: build the auxiliary head (its parameters sit under
      ``auxiliary_head`` so they can be excluded by path).
    in_channels: channels of the input images.
    image_size: input height/width; sets the auxiliary head's geometry.
    rngs: ``params`` keys and the ``dropout`` stream for drop-path.

  Example:
    >>> net = NetworkCIFAR(DARTS_V2, rngs=nnx.Rngs(params=0, dropout=1))
    >>> logits, logits_aux = net(jnp.ones((2, 32, 32, 3)), drop_prob=0.2)
    >>> logits.shape, logits_aux.shape
    ((2, 10), (2, 10))
  """

  def __init__(
      self,
      genotype: Genotype,
      *,
      C: int = 36,
      num_classes: int = 10,
      layers: int = 20,
      auxiliary: bool = True,
      in_channels: int = 3,
      image_size: int = 32,
      rngs: nnx.Rngs,
  ):
    C_stem = 3 * C
    self.stem = ops.Sequential(
        ops.Conv(in_channels, C_stem, 3, 1, 1, rngs=rngs),
        ops.BatchNorm(C_stem, True, rngs=rngs),
    )
    self._build_cells(
        genotype, C, C_stem, C_stem, image_size, layers, False, auxiliary,
        AuxiliaryHeadCIFAR, num_classes, rngs,
    )

  def __call__(
      self, x: jax.Array, drop_prob=0.0, *, key: jax.Array | None = None
  ) -> tuple[jax.Array, jax.Array | None]:
    """Classifies a batch of NHWC images.

    Args:
      x: images of shape (N, H, W, in_channels).
      drop_prob: drop-path probability, a float or scalar array (pass an
        array to change it per epoch without recompiling).
      key: optional explicit drop-path key; by default the modules' own
        ``dropout`` streams are used.

    Returns:
      ``(logits, logits_aux)``, each (N, num_classes); ``logits_aux`` is None
      in eval mode or without an auxiliary head.
    """
    s = self.stem(x)
    return self._run_cells(s, s, drop_prob, key)


class NetworkImageNet(_Network):
  """The DARTS network for ImageNet in the mobile setting.

  Stems: ``stem0`` (3x3 conv stride 2 to ``C // 2``, BN, ReLU, 3x3 conv
  stride 2 to ``C``, BN) and ``stem1`` (ReLU, 3x3 conv stride 2, BN), which
  feed the first cell its two inputs at 1/4 and 1/8 of the image size (so the
  first cell reduces its older input). Cells, auxiliary head and classifier
  as in ``NetworkCIFAR``.

  Args:
    genotype: the normal and reduction cells.
    C: initial channels per node (48 in the paper).
    num_classes: classes predicted.
    layers: number of cells (14 in the paper).
    auxiliary: build the auxiliary head (under ``auxiliary_head``).
    in_channels: channels of the input images.
    image_size: input height/width; sets the auxiliary head's geometry.
    rngs: ``params`` keys and the ``dropout`` stream for drop-path.

  Example:
    >>> net = NetworkImageNet(DARTS_V2, rngs=nnx.Rngs(0))
    >>> logits, _ = net(jnp.ones((1, 224, 224, 3)))
    >>> logits.shape
    (1, 1000)
  """

  def __init__(
      self,
      genotype: Genotype,
      *,
      C: int = 48,
      num_classes: int = 1000,
      layers: int = 14,
      auxiliary: bool = True,
      in_channels: int = 3,
      image_size: int = 224,
      rngs: nnx.Rngs,
  ):
    if C % 2:
      raise UserError(f"NetworkImageNet needs an even C, got {C}")
    self.stem0 = ops.Sequential(
        ops.Conv(in_channels, C // 2, 3, 2, 1, rngs=rngs),
        ops.BatchNorm(C // 2, True, rngs=rngs),
        jax.nn.relu,
        ops.Conv(C // 2, C, 3, 2, 1, rngs=rngs),
        ops.BatchNorm(C, True, rngs=rngs),
    )
    self.stem1 = ops.Sequential(
        jax.nn.relu,
        ops.Conv(C, C, 3, 2, 1, rngs=rngs),
        ops.BatchNorm(C, True, rngs=rngs),
    )
    size = _reduced(_reduced(_reduced(image_size)))
    self._build_cells(
        genotype, C, C, C, size, layers, True, auxiliary,
        AuxiliaryHeadImageNet, num_classes, rngs,
    )

  def __call__(
      self, x: jax.Array, drop_prob=0.0, *, key: jax.Array | None = None
  ) -> tuple[jax.Array, jax.Array | None]:
    """Classifies a batch of NHWC images; as ``NetworkCIFAR.__call__``."""
    s0 = self.stem0(x)
    s1 = self.stem1(s0)
    return self._run_cells(s0, s1, drop_prob, key)


# name -> (network class, default keyword arguments); add entries to register
# a dataset.
DATASETS: dict[str, tuple[Callable[..., nnx.Module], dict[str, Any]]] = {
    "cifar10": (
        NetworkCIFAR,
        dict(C=36, layers=20, num_classes=10, in_channels=3, image_size=32),
    ),
    "cifar100": (
        NetworkCIFAR,
        dict(C=36, layers=20, num_classes=100, in_channels=3, image_size=32),
    ),
    "svhn": (
        NetworkCIFAR,
        dict(C=36, layers=20, num_classes=10, in_channels=3, image_size=32),
    ),
    "mnist": (
        NetworkCIFAR,
        dict(C=16, layers=8, num_classes=10, in_channels=1, image_size=28),
    ),
    "fashion_mnist": (
        NetworkCIFAR,
        dict(C=16, layers=8, num_classes=10, in_channels=1, image_size=28),
    ),
    "digits": (
        NetworkCIFAR,
        dict(C=16, layers=8, num_classes=10, in_channels=1, image_size=8),
    ),
    "imagenet": (
        NetworkImageNet,
        dict(C=48, layers=14, num_classes=1000, in_channels=3, image_size=224),
    ),
}


def build_network(
    genotype: Genotype, dataset: str = "cifar10", *, rngs: nnx.Rngs, **overrides
) -> nnx.Module:
  """Builds the final network for a dataset, with the paper's defaults.

  CIFAR-10/100 and SVHN: ``NetworkCIFAR`` with 36 channels, 20 cells, 32 px.
  ImageNet: ``NetworkImageNet`` with 48 channels, 14 cells, 224 px, 1000
  classes. MNIST, Fashion-MNIST and the 8x8 digits: ``NetworkCIFAR`` with 16
  channels, 8 cells and one input channel. See ``DATASETS``.

  Args:
    genotype: the normal and reduction cells.
    dataset: a key of ``DATASETS``.
    rngs: ``params`` keys and the ``dropout`` stream for drop-path.
    **overrides: constructor arguments replacing the dataset's defaults
      (``C``, ``layers``, ``num_classes``, ``auxiliary``, ``in_channels``,
      ``image_size``).

  Returns:
    The network, in training mode.

  Example:
    >>> net = build_network(DARTS_V2, 'cifar100', layers=8, rngs=nnx.Rngs(0))
  """
  if dataset not in DATASETS:
    raise UserError(
        f"unknown dataset {dataset!r}; known datasets: {', '.join(DATASETS)}"
    )
  cls, defaults = DATASETS[dataset]
  allowed = {"C", "layers", "num_classes", "auxiliary", "in_channels", "image_size"}
  unknown = sorted(set(overrides) - allowed)
  if unknown:
    raise UserError(
        f"unknown network option(s) {', '.join(unknown)};"
        f" allowed: {', '.join(sorted(allowed))}"
    )
  return cls(genotype, **{**defaults, **overrides}, rngs=rngs)
