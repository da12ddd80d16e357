"""Genotype: a discrete DARTS cell, its JSON form, ``derive`` and the zoo."""

from __future__ import annotations

import dataclasses

__all__ = ["Genotype"]


@dataclasses.dataclass(frozen=True)
class Genotype:
  """A normal and a reduction cell, in the DARTS layout.

  ``normal`` and ``reduce`` are tuples of ``(op_name, input_index)`` pairs,
  two per intermediate node; input 0 and 1 are the cell's two inputs, input
  ``k >= 2`` is intermediate node ``k - 2``. ``*_concat`` lists the states
  concatenated into the cell's output.
  """

  normal: tuple[tuple[str, int], ...]
  normal_concat: tuple[int, ...]
  reduce: tuple[tuple[str, int], ...]
  reduce_concat: tuple[int, ...]
