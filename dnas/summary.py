"""Model size and cost: trainable parameters and multiply-adds.

The numbers the DARTS paper reports for its networks (Liu et al., ICLR 2019,
tables 1 and 2): ``count_params`` counts weights as the reference's
``utils.count_parameters_in_MB`` does (auxiliary head excluded, BatchNorm
scale and bias included, running statistics not), and ``count_macs`` counts the
multiply-adds of one image's forward pass through convolutions and dense
layers, read off the traced program without compiling it.

  >>> net = network.NetworkCIFAR(DARTS_V2, rngs=nnx.Rngs(0))
  >>> count_params(net)
  3349342
  >>> count_macs(net, (1, 32, 32, 3))
  528359040
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
import contextlib
import math
import os

from flax import nnx
import jax
import jax.extend.core as jex
import jax.numpy as jnp

__all__ = ["count_params", "count_macs"]


def count_params(model: nnx.Module, *, exclude_auxiliary: bool = True) -> int:
  """Counts the trainable weights (``nnx.Param``) of a model.

  BatchNorm scale and bias are ``nnx.Param`` and counted; running statistics
  (``nnx.BatchStat``), RNG state and architecture parameters (which are not
  ``nnx.Param``) are not.

  Args:
    model: an NNX module; abstract ones (from ``nnx.eval_shape``) work too.
    exclude_auxiliary: skip every parameter whose path contains
      ``'auxiliary'``, as the reference does for the numbers it reports.

  Returns:
    The number of scalar weights.

  Example:
    >>> count_params(nnx.Linear(3, 4, rngs=nnx.Rngs(0)))
    16
  """
  total = 0
  for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    if exclude_auxiliary and any("auxiliary" in str(key) for key in path):
      continue
    total += math.prod(variable.get_value().shape)
  return total


@contextlib.contextmanager
def _native_depthwise() -> Iterator[None]:
  """Traces depthwise convolutions as grouped convolutions, not shifted adds.

  ``ops.depthwise_conv2d`` reads ``DNAS_DEPTHWISE`` at trace time; the native
  form is one ``conv_general_dilated`` whose multiply-adds can be counted.
  """
  previous = os.environ.get("DNAS_DEPTHWISE")
  os.environ["DNAS_DEPTHWISE"] = "native"
  try:
    yield
  finally:
    if previous is None:
      del os.environ["DNAS_DEPTHWISE"]
    else:
      os.environ["DNAS_DEPTHWISE"] = previous


def _conv_macs(eqn) -> int:
  rhs = eqn.invars[1].aval
  out = eqn.outvars[0].aval
  _, rhs_spec, _ = eqn.params["dimension_numbers"]
  # rhs_spec = (out-feature dim, in-feature dim, spatial dims...); the
  # in-feature size is already per group.
  per_output = math.prod(rhs.shape[d] for d in rhs_spec[1:])
  return math.prod(out.shape) * per_output


def _dot_macs(eqn) -> int:
  lhs = eqn.invars[0].aval
  out = eqn.outvars[0].aval
  (lhs_contracting, _), _ = eqn.params["dimension_numbers"]
  return math.prod(out.shape) * math.prod(lhs.shape[d] for d in lhs_contracting)


def _jaxpr_macs(jaxpr: jex.Jaxpr) -> int:
  """Multiply-adds of convolutions and dot products, nested jaxprs included."""
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      total += _conv_macs(eqn)
    elif name == "dot_general":
      total += _dot_macs(eqn)
    elif name == "scan":
      total += eqn.params["length"] * _jaxpr_macs(eqn.params["jaxpr"].jaxpr)
    elif name == "cond":
      # One branch runs; count the costliest.
      total += max(_jaxpr_macs(b.jaxpr) for b in eqn.params["branches"])
    else:
      # pjit, custom_jvp/vjp calls, remat, while bodies (counted once), ...
      total += sum(_jaxpr_macs(sub) for sub in jex.jaxprs_in_params(eqn.params))
  return total


def count_macs(
    model: nnx.Module, input_shape: Sequence[int], *, dtype=jnp.float32
) -> int:
  """Counts the forward multiply-adds per image of convolutions and matmuls.

  The model is traced (``jax.make_jaxpr``, nothing compiled or run) in eval
  mode, through an ``nnx.view`` that leaves ``model`` untouched, so training
  only parts such as an auxiliary head or drop-path are not counted. Depthwise
  convolutions are traced in their native grouped form so each is one
  countable convolution rather than elementwise shifted multiply-adds.
  Elementwise ops, pooling and BatchNorm are not counted, as in the DARTS
  paper's figures.

  Args:
    model: an NNX module called as ``model(x)``; abstract ones (from
      ``nnx.eval_shape``) work too.
    input_shape: shape of one input batch including the batch dimension, e.g.
      ``(1, 32, 32, 3)``; the total is divided by the batch size.
    dtype: input dtype.

  Returns:
    Multiply-adds for one example.

  Example:
    >>> count_macs(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), (1, 3))
    12
  """
  input_shape = tuple(int(d) for d in input_shape)
  if not input_shape or input_shape[0] < 1:
    raise ValueError(
        f"input_shape {input_shape} needs a leading batch dimension >= 1,"
        " e.g. (1, 32, 32, 3)"
    )
  view = nnx.view(
      model, deterministic=True, use_running_average=True, raise_if_not_found=False
  )
  graphdef, state = nnx.split(view)

  def forward(state, x):
    return nnx.merge(graphdef, state)(x)

  x = jax.ShapeDtypeStruct(input_shape, dtype)
  with _native_depthwise():
    closed = jax.make_jaxpr(forward)(state, x)
  return _jaxpr_macs(closed.jaxpr) // input_shape[0]
