"""Genotype: a discrete DARTS cell, its JSON form, ``derive`` and the zoo.

A ``Genotype`` is what a search hands to the final network: for the normal and
the reduction cell, two ``(op_name, input_index)`` edges per intermediate node
and the states concatenated into the cell's output. It is read and written as
JSON in the DARTS layout::

  {"normal": [["sep_conv_3x3", 0], ["sep_conv_3x3", 1], ...],
   "normal_concat": [2, 3, 4, 5],
   "reduce": [["max_pool_3x3", 0], ...],
   "reduce_concat": [2, 3, 4, 5]}

``derive`` turns architecture logits into a genotype with the rule of DARTS
(Liu et al., ICLR 2019, Sec. 2.4; reference ``cnn/model_search.py``
``Network.genotype``). The zoo holds published genotypes as data
(``dnas/zoo/genotypes.json``), looked up by name:

  >>> from dnas import genotype
  >>> g = genotype.resolve('DARTS')          # or a path to a .json file
  >>> g.steps, g.normal_concat
  (4, (2, 3, 4, 5))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import functools
import importlib.resources
import json
import numbers
import os
import zipfile

import numpy as np

from dnas import ops
from dnas.errors import UserError

__all__ = [
    "Genotype",
    "derive",
    "load_alphas",
    "load",
    "from_json",
    "zoo_names",
    "from_zoo",
    "resolve",
]

_FIELDS = ("normal", "normal_concat", "reduce", "reduce_concat")
_CELLS = ("normal", "reduce")
_SAVEZ_HINT = "save it with numpy.savez(path, normal=..., reduce=...)"


def _one_line(error: BaseException) -> str:
  return " ".join(str(error).split())


def _short(value: object, limit: int = 60) -> str:
  text = " ".join(repr(value).split())
  return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_int(value: object) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _known_ops() -> str:
  return ", ".join(ops.OPS)


@dataclasses.dataclass(frozen=True)
class Genotype:
  """A normal and a reduction cell, in the DARTS layout.

  ``normal`` and ``reduce`` are tuples of ``(op_name, input_index)`` pairs,
  two per intermediate node; input 0 and 1 are the cell's two inputs, input
  ``k >= 2`` is intermediate node ``k - 2``. ``*_concat`` lists the states
  concatenated into the cell's output. Lists (and ranges) given to the
  constructor are stored as tuples; the constructor does not check the
  contents, ``validate`` does (every loader and ``derive`` call it).

  Example:
    >>> g = Genotype(
    ...     normal=[('sep_conv_3x3', 0), ('skip_connect', 1)], normal_concat=[2],
    ...     reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1)], reduce_concat=[2])
    >>> g.validate().steps
    1
  """

  normal: tuple[tuple[str, int], ...]
  normal_concat: tuple[int, ...]
  reduce: tuple[tuple[str, int], ...]
  reduce_concat: tuple[int, ...]

  def __post_init__(self):
    for cell in _CELLS:
      edges = getattr(self, cell)
      if isinstance(edges, (list, tuple)):
        edges = tuple(
            tuple(edge) if isinstance(edge, (list, tuple)) else edge
            for edge in edges
        )
        object.__setattr__(self, cell, edges)
      concat = getattr(self, f"{cell}_concat")
      if isinstance(concat, (list, tuple, range)):
        object.__setattr__(self, f"{cell}_concat", tuple(concat))

  @property
  def steps(self) -> int:
    """The number of intermediate nodes per cell (4 in DARTS, 5 in NASNet)."""
    return len(self.normal) // 2

  def validate(self) -> Genotype:
    """Checks that the genotype describes two buildable cells.

    Each cell needs exactly two edges per intermediate node (both cells the
    same number of nodes), op names registered in ``ops.OPS`` (not only
    ``PRIMITIVES``: NASNet uses ``sep_conv_7x7``), node ``i`` reading inputs
    ``0 .. i + 1`` only, and a non-empty concat of distinct states
    ``2 .. steps + 1``.

    Returns:
      The genotype itself, so that calls chain.

    Raises:
      UserError: one line naming the first problem found.

    Example:
      >>> from_zoo('NASNet').validate().steps
      5
    """
    for cell in _CELLS:
      _check_edges(cell, getattr(self, cell))
    if len(self.normal) != len(self.reduce):
      raise UserError(
          f"normal has {len(self.normal) // 2} nodes but reduce has"
          f" {len(self.reduce) // 2}; give both cells the same number of"
          " intermediate nodes (2 edges each)"
      )
    for cell in _CELLS:
      _check_concat(f"{cell}_concat", getattr(self, f"{cell}_concat"), self.steps)
    return self

  def to_dict(self) -> dict[str, list]:
    """The JSON-ready dict in the DARTS layout.

    Returns:
      ``{"normal": [[op, input], ...], "normal_concat": [...], "reduce": ...,
      "reduce_concat": ...}`` with plain lists, strings and ints.

    Example:
      >>> from_zoo('DARTS_V2').to_dict()['normal_concat']
      [2, 3, 4, 5]
    """
    out: dict[str, list] = {}
    for cell in _CELLS:
      out[cell] = [[name, int(index)] for name, index in getattr(self, cell)]
      out[f"{cell}_concat"] = [int(i) for i in getattr(self, f"{cell}_concat")]
    return out

  def to_json(self) -> str:
    """The genotype as JSON text, one key per line (no trailing newline).

    Returns:
      A string that ``from_json`` reads back into an equal genotype.

    Example:
      >>> g = from_zoo('DARTS_V2')
      >>> from_json(g.to_json()) == g
      True
    """
    data = self.to_dict()
    body = ",\n".join(
        f"  {json.dumps(key)}: {json.dumps(data[key])}" for key in _FIELDS
    )
    return "{\n" + body + "\n}"

  @classmethod
  def from_dict(cls, data: Mapping) -> Genotype:
    """Builds and validates a genotype from its DARTS-layout dict.

    Args:
      data: a mapping with exactly the keys ``normal``, ``normal_concat``,
        ``reduce`` and ``reduce_concat``, as written by ``to_dict``.

    Returns:
      The validated genotype.

    Raises:
      UserError: for a missing or extra key, a wrong type or anything
        ``validate`` rejects.

    Example:
      >>> Genotype.from_dict(from_zoo('ENAS').to_dict()).steps
      5
    """
    if not isinstance(data, Mapping):
      raise UserError(
          f"a genotype must be a JSON object with keys {', '.join(_FIELDS)};"
          f" got {type(data).__name__} {_short(data)}"
      )
    missing = [key for key in _FIELDS if key not in data]
    if missing:
      raise UserError(
          f"genotype is missing {', '.join(map(repr, missing))}; it needs"
          f" exactly the keys {', '.join(_FIELDS)}"
      )
    extra = [key for key in data if key not in _FIELDS]
    if extra:
      raise UserError(
          f"genotype has unknown key(s) {', '.join(_short(k) for k in extra)};"
          f" allowed keys are {', '.join(_FIELDS)}"
      )
    return cls(**{key: data[key] for key in _FIELDS}).validate()

  @classmethod
  def from_json(cls, text: str) -> Genotype:
    """Parses and validates a genotype from JSON text.

    Args:
      text: JSON in the DARTS layout, as written by ``to_json``.

    Returns:
      The validated genotype.

    Raises:
      UserError: if the text is not JSON or not a valid genotype.

    Example:
      >>> Genotype.from_json(from_zoo('PDARTS').to_json()).normal[1]
      ('dil_conv_3x3', 1)
    """
    try:
      data = json.loads(text)
    except json.JSONDecodeError as e:
      raise UserError(
          f"genotype text is not valid JSON ({e.msg} at line {e.lineno} column"
          f" {e.colno}); write it as in Genotype.to_json()"
      ) from None
    return cls.from_dict(data)

  def save(self, path: str | os.PathLike) -> None:
    """Validates the genotype and writes it as JSON, atomically.

    The text goes to a temporary file next to ``path`` that then replaces
    ``path`` in one step, so a reader never sees half a file. Missing parent
    directories are created.

    Args:
      path: the ``.json`` file to write.

    Raises:
      UserError: if the genotype is invalid or the file cannot be written.

    Example:
      >>> from_zoo('DARTS').save('/tmp/darts.json')
      >>> load('/tmp/darts.json') == from_zoo('DARTS_V2')
      True
    """
    self.validate()
    path = os.fspath(path)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
      os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
      try:
        with open(tmp, "w", encoding="utf-8") as f:
          f.write(self.to_json() + "\n")
          f.flush()
          os.fsync(f.fileno())
        os.replace(tmp, path)
      finally:
        if os.path.exists(tmp):
          os.unlink(tmp)
    except OSError as e:
      raise UserError(
          f"cannot write genotype file {path!r}: {e.strerror or _one_line(e)};"
          " check the directory exists and is writable"
      ) from None

  @classmethod
  def load(cls, path: str | os.PathLike) -> Genotype:
    """Reads and validates a genotype JSON file.

    Args:
      path: a file written by ``save`` (or any JSON in the DARTS layout).

    Returns:
      The validated genotype.

    Raises:
      UserError: naming the file, if it is missing, unreadable, not JSON or
        not a valid genotype.

    Example:
      >>> from_zoo('PC_DARTS').save('/tmp/pc.json')
      >>> Genotype.load('/tmp/pc.json').reduce[0]
      ('sep_conv_5x5', 1)
    """
    path = os.fspath(path)
    try:
      with open(path, encoding="utf-8") as f:
        text = f.read()
    except FileNotFoundError:
      raise UserError(
          f"genotype file {path!r} does not exist; pass a .json file written"
          f" by Genotype.save or a zoo name ({', '.join(zoo_names())})"
      ) from None
    except (OSError, UnicodeDecodeError) as e:
      reason = getattr(e, "strerror", None) or _one_line(e)
      raise UserError(
          f"cannot read genotype file {path!r}: {reason}; pass a readable"
          " UTF-8 .json file"
      ) from None
    try:
      data = json.loads(text)
    except json.JSONDecodeError as e:
      raise UserError(
          f"genotype file {path!r} is not valid JSON ({e.msg} at line"
          f" {e.lineno} column {e.colno}); write it with Genotype.save"
      ) from None
    try:
      return cls.from_dict(data)
    except UserError as e:
      raise UserError(f"genotype file {path!r}: {e}") from None

  def __str__(self) -> str:
    lines = []
    for cell in _CELLS:
      edges = getattr(self, cell)
      concat = ", ".join(str(i) for i in getattr(self, f"{cell}_concat"))
      lines.append(
          f"{cell} cell: {len(edges) // 2} nodes, output = concat({concat})"
      )
      for node in range(len(edges) // 2):
        pair = edges[2 * node : 2 * node + 2]
        terms = " + ".join(f"{name}({index})" for name, index in pair)
        lines.append(f"  {node + 2} = {terms}")
    return "\n".join(lines)


def _check_edges(cell: str, edges: object) -> None:
  if not isinstance(edges, tuple) or not edges:
    raise UserError(
        f"{cell} must be a non-empty list of [op_name, input_index] pairs,"
        f" got {_short(edges)}"
    )
  for j, edge in enumerate(edges):
    if not (
        isinstance(edge, tuple)
        and len(edge) == 2
        and isinstance(edge[0], str)
        and _is_int(edge[1])
    ):
      raise UserError(
          f"{cell}[{j}] is {_short(edge)}; each edge must be an [op_name,"
          " input_index] pair like ['sep_conv_3x3', 0]"
      )
  if len(edges) % 2:
    raise UserError(
        f"{cell} has {len(edges)} edges; each intermediate node takes exactly"
        " 2 edges, so give an even number (8 for a 4-node DARTS cell)"
    )
  for j, (name, index) in enumerate(edges):
    if name not in ops.OPS:
      raise UserError(
          f"{cell}[{j}] uses unknown op {name!r}; known ops: {_known_ops()}"
          " (add one with dnas.ops.register_op)"
      )
    node = j // 2
    if not 0 <= index <= node + 1:
      raise UserError(
          f"{cell}[{j}] = ({name!r}, {index}) reads input {index}, but node"
          f" {node} may only read inputs 0..{node + 1} (the two cell inputs"
          " and earlier nodes)"
      )


def _check_concat(field: str, concat: object, steps: int) -> None:
  if not isinstance(concat, tuple) or not concat:
    raise UserError(
        f"{field} must be a non-empty list of state indices like [2, 3, 4, 5],"
        f" got {_short(concat)}"
    )
  seen = set()
  for index in concat:
    if not _is_int(index):
      raise UserError(
          f"{field} holds {_short(index)}; list integer state indices like"
          " [2, 3, 4, 5]"
      )
    if not 2 <= index <= steps + 1:
      raise UserError(
          f"{field} lists state {index}, but a {steps}-node cell can only"
          f" concatenate states 2..{steps + 1}"
      )
    if index in seen:
      raise UserError(f"{field} lists state {index} twice; list each state once")
    seen.add(index)


def load(path: str | os.PathLike) -> Genotype:
  """Reads and validates a genotype JSON file; same as ``Genotype.load``.

  Args:
    path: a file written by ``Genotype.save``.

  Returns:
    The validated genotype.

  Example:
    >>> from_zoo('ENAS').save('/tmp/enas.json')
    >>> load('/tmp/enas.json').reduce_concat
    (2, 4, 5, 6)
  """
  return Genotype.load(path)


def from_json(text: str) -> Genotype:
  """Parses and validates JSON genotype text; same as ``Genotype.from_json``.

  Args:
    text: JSON in the DARTS layout.

  Returns:
    The validated genotype.

  Example:
    >>> from_json(from_zoo('AmoebaNet').to_json()).normal_concat
    (4, 5, 6)
  """
  return Genotype.from_json(text)


# --- derive ---------------------------------------------------------------


def _num_edges(steps: int) -> int:
  return sum(2 + i for i in range(steps))


def _check_primitives(primitives: Sequence[str]) -> tuple[str, ...]:
  if isinstance(primitives, str) or not isinstance(primitives, Sequence):
    raise UserError(
        f"primitives must be a list of op names like dnas.ops.PRIMITIVES, got"
        f" {_short(primitives)}"
    )
  names = tuple(primitives)
  for name in names:
    if not isinstance(name, str) or name not in ops.OPS:
      raise UserError(
          f"primitives has unknown op {_short(name)}; known ops: {_known_ops()}"
      )
  if len(set(names)) != len(names):
    raise UserError(
        f"primitives lists an op twice: {_short(list(names))}; list each once"
    )
  if not [name for name in names if name != "none"]:
    raise UserError("primitives needs at least one op other than 'none' to derive from")
  return names


def _as_alphas(value: object, what: str, num_ops: int) -> np.ndarray:
  try:
    array = np.array(value, dtype=np.float64)
  except (TypeError, ValueError):
    raise UserError(
        f"{what} must be a numeric array of shape (edges, {num_ops}), got"
        f" {type(value).__name__}"
    ) from None
  if array.ndim != 2 or array.shape[1] != num_ops:
    raise UserError(
        f"{what} has shape {array.shape}; expected (edges, {num_ops}): one row"
        f" per edge, one column per primitive"
    )
  bad = np.argwhere(~np.isfinite(array))
  if bad.size:
    raise UserError(
        f"{what} holds NaN or inf at edge {bad[0][0]}; the search diverged,"
        " so derive from an earlier checkpoint or lower the learning rates"
    )
  return array


def _steps_for(rows: int, what: str, steps: int | None) -> int:
  if steps is not None:
    if not _is_int(steps) or steps < 1:
      raise UserError(f"steps must be a positive integer, got {_short(steps)}")
    if rows != _num_edges(steps):
      raise UserError(
          f"{what} has {rows} edge rows but steps={steps} needs"
          f" {_num_edges(steps)}; pass matching alphas or steps"
      )
    return int(steps)
  inferred = 1
  while _num_edges(inferred) < rows:
    inferred += 1
  if _num_edges(inferred) != rows:
    raise UserError(
        f"{what} has {rows} edge rows, but a cell with n nodes has n*(n+3)/2"
        " edges (2, 5, 9, 14, 20, ...); pass one row per edge"
    )
  return inferred


def _softmax(logits: np.ndarray) -> np.ndarray:
  shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
  return shifted / shifted.sum(axis=-1, keepdims=True)


def _derive_cell(
    weights: np.ndarray, primitives: tuple[str, ...], steps: int
) -> tuple[tuple[str, int], ...]:
  candidates = weights.copy()
  if "none" in primitives:
    candidates[:, primitives.index("none")] = -np.inf
  # argmax takes the first maximum: equal weights go to the lower op index,
  # as the reference's strict '>' scan does.
  best_op = np.argmax(candidates, axis=1)
  strength = candidates[np.arange(len(candidates)), best_op]
  edges = []
  start = 0
  for node in range(steps):
    num_inputs = node + 2
    # A stable sort keeps equal-strength edges in input order, as the
    # reference's sorted() does: the lower input index wins a tie.
    kept = np.argsort(-strength[start : start + num_inputs], kind="stable")[:2]
    edges.extend((primitives[best_op[start + j]], int(j)) for j in kept)
    start += num_inputs
  return tuple(edges)


def derive(
    alphas_normal,
    alphas_reduce,
    *,
    primitives: Sequence[str] = ops.PRIMITIVES,
    steps: int | None = None,
    multiplier: int | None = None,
) -> Genotype:
  """Derives the discrete cells from architecture logits (DARTS Sec. 2.4).

  Row ``e`` of each alpha matrix holds the logits of edge ``e`` over
  ``primitives``; edges are ordered node by node, node ``i`` having one edge
  from each of inputs ``0 .. i + 1`` (rows 0-1 for node 0, 2-4 for node 1,
  5-8 for node 2, 9-13 for node 3). As in the reference
  ``Network.genotype``: each row is softmaxed; an edge's strength is its
  largest weight over ops other than ``'none'``; each node keeps its two
  strongest incoming edges, strongest first, each with its strongest op
  other than ``'none'``; both cells concatenate the last ``multiplier``
  nodes.

  Ties are broken deterministically: between equally strong ops the lower
  index in ``primitives`` wins, between equally strong edges the lower input
  index wins (and comes first). The softmax runs in float64, so weights that
  differ below float32 resolution are not tied.

  Args:
    alphas_normal: logits of the normal cell, shape (edges, len(primitives));
      numpy or JAX arrays.
    alphas_reduce: logits of the reduction cell, same shape.
    primitives: the op names of the columns; ``'none'`` may be absent.
    steps: the number of intermediate nodes; inferred from the rows (14 ->
      4) when None.
    multiplier: how many of the last nodes to concatenate; all when None.

  Returns:
    The validated genotype, with ``normal_concat == reduce_concat ==
    (2 + steps - multiplier, ..., steps + 1)``.

  Raises:
    UserError: for a wrong shape, NaN/inf, unknown primitives or a bad
      ``steps``/``multiplier``.

  Example:
    >>> import numpy as np
    >>> g = derive(np.zeros((14, 8)), np.zeros((14, 8)))
    >>> g.normal[:2]  # all tied: first op after 'none', inputs in order
    (('max_pool_3x3', 0), ('max_pool_3x3', 1))
  """
  names = _check_primitives(primitives)
  normal = _as_alphas(alphas_normal, "alphas_normal", len(names))
  reduce = _as_alphas(alphas_reduce, "alphas_reduce", len(names))
  if normal.shape != reduce.shape:
    raise UserError(
        f"alphas_normal has shape {normal.shape} but alphas_reduce has"
        f" {reduce.shape}; pass the two matrices of one search"
    )
  steps = _steps_for(normal.shape[0], "alphas_normal", steps)
  if multiplier is None:
    multiplier = steps
  if not _is_int(multiplier) or not 1 <= multiplier <= steps:
    raise UserError(
        f"multiplier must be an integer in 1..{steps} (the nodes to"
        f" concatenate), got {_short(multiplier)}"
    )
  concat = tuple(range(2 + steps - multiplier, steps + 2))
  return Genotype(
      normal=_derive_cell(_softmax(normal), names, steps),
      normal_concat=concat,
      reduce=_derive_cell(_softmax(reduce), names, steps),
      reduce_concat=concat,
  ).validate()


def load_alphas(
    path: str | os.PathLike, *, primitives: Sequence[str] = ops.PRIMITIVES
) -> tuple[np.ndarray, np.ndarray]:
  """Reads the architecture logits of a search from an ``.npz`` file.

  Args:
    path: an archive with float arrays ``normal`` and ``reduce`` of raw
      logits, each of shape (edges, len(primitives)), e.g. (14, 8).
    primitives: the op names of the columns, for the shape check.

  Returns:
    ``(alphas_normal, alphas_reduce)`` as float64 arrays, ready for
    ``derive``.

  Raises:
    UserError: naming the file, if it is missing, not an ``.npz``, lacks an
      array, or holds a wrong shape or NaN/inf.

  Example:
    >>> np.savez('/tmp/alphas.npz', normal=np.zeros((14, 8)),
    ...          reduce=np.zeros((14, 8)))
    >>> normal, reduce = load_alphas('/tmp/alphas.npz')
    >>> derive(normal, reduce).steps
    4
  """
  names = _check_primitives(primitives)
  path = os.fspath(path)
  try:
    archive = np.load(path, allow_pickle=False)
  except FileNotFoundError:
    raise UserError(
        f"alphas file {path!r} does not exist; pass an .npz with arrays"
        " 'normal' and 'reduce'"
    ) from None
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise UserError(
        f"alphas file {path!r} is not a readable .npz archive ({_one_line(e)});"
        f" {_SAVEZ_HINT}"
    ) from None
  if not isinstance(archive, np.lib.npyio.NpzFile):
    raise UserError(
        f"alphas file {path!r} holds a single array, not an .npz archive;"
        f" {_SAVEZ_HINT}"
    )
  arrays = {}
  with archive:
    for key in ("normal", "reduce"):
      if key not in archive.files:
        present = ", ".join(map(repr, archive.files)) or "no arrays"
        raise UserError(
            f"alphas file {path!r} has no array {key!r} (it has {present});"
            f" {_SAVEZ_HINT}"
        )
      try:
        arrays[key] = archive[key]
      except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(
            f"alphas file {path!r}: cannot read array {key!r} ({_one_line(e)});"
            f" {_SAVEZ_HINT}"
        ) from None
  out = []
  for key in ("normal", "reduce"):
    what = f"array {key!r} in {path!r}"
    alphas = _as_alphas(arrays[key], what, len(names))
    _steps_for(alphas.shape[0], what, None)
    out.append(alphas)
  normal, reduce = out
  if normal.shape != reduce.shape:
    raise UserError(
        f"alphas file {path!r} has 'normal' of shape {normal.shape} but"
        f" 'reduce' of shape {reduce.shape}; save both cells of one search"
    )
  return normal, reduce


# --- zoo --------------------------------------------------------------------


def _key(name: str) -> str:
  return name.strip().casefold().replace("-", "_")


@functools.cache
def _zoo() -> tuple[dict[str, dict], dict[str, str]]:
  """Returns (canonical name -> entry, lookup key -> canonical name)."""
  text = (importlib.resources.files("dnas") / "zoo" / "genotypes.json").read_text(
      encoding="utf-8"
  )
  entries = {}
  lookup = {}
  for entry in json.loads(text)["genotypes"]:
    entries[entry["name"]] = entry
    for name in [entry["name"], *entry["aliases"]]:
      lookup[_key(name)] = entry["name"]
  return entries, lookup


def zoo_names(*, aliases: bool = False) -> list[str]:
  """The names of the published genotypes in the zoo.

  Args:
    aliases: also list the alternative names (``DARTS``, ``PCDARTS``, ...).

  Returns:
    Canonical names in zoo order, followed by the aliases if asked.

  Example:
    >>> zoo_names()[:2]
    ['DARTS_V1', 'DARTS_V2']
  """
  entries, _ = _zoo()
  names = list(entries)
  if aliases:
    names += [alias for entry in entries.values() for alias in entry["aliases"]]
  return names


def _known_names() -> str:
  entries, _ = _zoo()
  return ", ".join(
      name + (f" ({', '.join(e['aliases'])})" if e["aliases"] else "")
      for name, e in entries.items()
  )


def from_zoo(name: str) -> Genotype:
  """A published genotype by name, from ``dnas/zoo/genotypes.json``.

  Args:
    name: a zoo name or alias, e.g. ``'DARTS'`` (= ``'DARTS_V2'``),
      ``'pc-darts'``; case-insensitive, ``'-'`` reads as ``'_'``.

  Returns:
    The validated genotype.

  Raises:
    UserError: for an unknown name, listing the known ones.

  Example:
    >>> from_zoo('darts') == from_zoo('DARTS_V2')
    True
  """
  entries, lookup = _zoo()
  if not isinstance(name, str) or _key(name) not in lookup:
    raise UserError(
        f"unknown zoo genotype {_short(name)}; known names: {_known_names()}"
    )
  return Genotype.from_dict(entries[lookup[_key(name)]]["genotype"])


def resolve(name_or_path: str | os.PathLike | Genotype) -> Genotype:
  """A genotype from a JSON file, a zoo name or a ``Genotype``.

  A path-like object, a string ending in ``.json`` or naming an existing
  file is loaded; any other string is looked up in the zoo.

  Args:
    name_or_path: e.g. ``'DARTS_V2'``, ``'runs/search/genotype.json'``.

  Returns:
    The validated genotype.

  Raises:
    UserError: if the file cannot be loaded or the name is not in the zoo.

  Example:
    >>> resolve('PDARTS') == from_zoo('P-DARTS')
    True
  """
  if isinstance(name_or_path, Genotype):
    return name_or_path.validate()
  if isinstance(name_or_path, os.PathLike):
    return Genotype.load(name_or_path)
  if not isinstance(name_or_path, str):
    raise UserError(
        f"expected a genotype file or zoo name, got {_short(name_or_path)}"
    )
  if name_or_path.endswith(".json") or os.path.isfile(name_or_path):
    return Genotype.load(name_or_path)
  if _key(name_or_path) in _zoo()[1]:
    return from_zoo(name_or_path)
  raise UserError(
      f"{name_or_path!r} is neither a genotype file nor a zoo name; pass a"
      f" .json file or one of: {_known_names()}"
  )
