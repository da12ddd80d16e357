"""Architecture parameters as their own NNX variable type.

Weights are ``nnx.Param``; the continuous architecture parameters (DARTS's
alphas) are ``ArchParam``. Because ``ArchParam`` is not a subclass of
``nnx.Param``, the two are separated by type, never by hand-kept lists:

  >>> graphdef, weights, alphas, rest = nnx.split(model, nnx.Param, ArchParam, ...)

``rest`` then holds the BatchNorm statistics (``nnx.BatchStat``) and RNG state.
"""

from flax import nnx

__all__ = ["ArchParam", "weights_filter", "alphas_filter"]


class ArchParam(nnx.Variable):
  """A continuous architecture parameter (an alpha), e.g. shape (14, 8).

  Example:
    >>> alphas = ArchParam(jnp.zeros((14, 8)))
  """


# Filters, named for what they select, for nnx.split / nnx.state / nnx.grad.
weights_filter = nnx.Param
alphas_filter = ArchParam
