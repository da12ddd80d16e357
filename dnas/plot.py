"""Pictures of a search: the derived cells and the alphas over the epochs.

``plot_genotype`` draws the normal and the reduction cell as in the DARTS
paper (Liu et al., ICLR 2019, Fig. 4 and 5; reference ``cnn/visualize.py``):
the cell inputs ``c_{k-2}`` and ``c_{k-1}``, the intermediate nodes ``0 ..
n-1``, every edge labelled with its op, and the output ``c_{k}`` fed by the
concatenated nodes. It renders with graphviz's ``dot`` when that is installed
and draws the same graph with matplotlib otherwise. ``plot_alphas`` plots the
softmax weight of every op on every edge over a search's epochs.

  >>> from dnas import plot
  >>> plot.plot_genotype('DARTS_V2', '/tmp/darts_v2.png')
  '/tmp/darts_v2.png'
  >>> plot.plot_alphas('runs/search', '/tmp/alphas.png')  # a search workdir
  '/tmp/alphas.png'

Matplotlib is driven through ``matplotlib.figure.Figure`` and the Agg canvas
directly, never through ``pyplot``: plotting needs no display, opens no window
and leaves the caller's backend (a notebook's, say) untouched.
"""

from __future__ import annotations

from collections.abc import Callable
import math
import os
import shutil
import subprocess
import uuid
import warnings
import zipfile

import numpy as np

from dnas import genotype as genotype_lib
from dnas import ops
from dnas.errors import UserError

__all__ = ["genotype_dot", "plot_genotype", "plot_alphas"]

_FORMATS = {
    ".png": "png",
    ".svg": "svg",
    ".pdf": "pdf",
    ".dot": "dot",
    ".gv": "dot",
}
_BACKENDS = ("auto", "graphviz", "matplotlib")
_CELLS = (("normal", "normal cell"), ("reduce", "reduction cell"))
_DOT_TIMEOUT_S = 60
_HISTORY_FILE = "alphas_history.npz"
_SNAPSHOT_FILE = "alphas.npz"
_PRODUCER = "`dnas search --workdir DIR` writes it"
_OUTPUT_LABEL = "c_{k}"

# The colours of the reference's visualize.py (graphviz X11 names).
_INPUT_COLOR = ("darkseagreen2", "#b4eeb4")
_NODE_COLOR = ("lightblue", "#add8e6")
_OUTPUT_COLOR = ("palegoldenrod", "#eee8aa")


def _one_line(error: BaseException) -> str:
  return " ".join(str(error).split())


def _state_label(state: int) -> str:
  """The DARTS name of cell state ``state``: inputs, then nodes 0..n-1."""
  if state == 0:
    return "c_{k-2}"
  if state == 1:
    return "c_{k-1}"
  return str(state - 2)


def _output_format(out_path: str | os.PathLike) -> tuple[str, str]:
  """Returns ``(path, format)`` for an output file, or raises UserError."""
  if not isinstance(out_path, (str, os.PathLike)):
    raise UserError(
        f"the output path must be a file name like cell.png, got"
        f" {type(out_path).__name__}"
    )
  path = os.fspath(out_path)
  ext = os.path.splitext(path)[1].lower()
  if ext not in _FORMATS:
    raise UserError(
        f"cannot tell the image format of {path!r} from its extension; end"
        f" the file name with one of {', '.join(_FORMATS)}"
    )
  return path, _FORMATS[ext]


def _write_atomically(path: str, write: Callable[[str], None]) -> str:
  """Calls ``write(tmp)`` on a temporary file next to ``path``, then renames.

  A reader never sees half an image, and a failed plot leaves no file behind.
  """
  directory = os.path.dirname(os.path.abspath(path))
  name, ext = os.path.splitext(os.path.basename(path))
  # Created by ``write`` itself, so the file gets the usual permissions.
  tmp = os.path.join(
      directory, f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{ext}"
  )
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as e:
    raise UserError(
        f"cannot write plot file {path!r}: {e.strerror or _one_line(e)}; check"
        " the directory exists and is writable"
    ) from None
  try:
    write(tmp)
    os.replace(tmp, path)
  except OSError as e:
    raise UserError(
        f"cannot write plot file {path!r}: {e.strerror or _one_line(e)}; check"
        " the directory is writable and the disk is not full"
    ) from None
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
  return path


def _save_figure(figure, path: str, fmt: str) -> None:
  """Saves a matplotlib figure; SVG keeps its text as text, files are stable."""
  import matplotlib

  metadata = {"svg": {"Date": None}, "pdf": {"CreationDate": None}}.get(fmt)
  with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "dnas"}):
    figure.savefig(path, format=fmt, dpi=150, metadata=metadata)


def _new_figure(**kwargs):
  """A matplotlib figure on the Agg canvas, without pyplot's global state."""
  from matplotlib.backends import backend_agg
  from matplotlib import figure

  fig = figure.Figure(**kwargs)
  backend_agg.FigureCanvasAgg(fig)
  return fig


# --- genotype: DOT ------------------------------------------------------------


def _dot_quote(text: str) -> str:
  escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
  return f'"{escaped}"'


def _cell_dot(
    prefix: str, caption: str, edges, concat, steps: int
) -> list[str]:
  ids = [f"{prefix}_in0", f"{prefix}_in1"] + [
      f"{prefix}_{node}" for node in range(steps)
  ]
  out_id = f"{prefix}_out"
  lines = [
      f"  subgraph cluster_{prefix} {{",
      f"    label={_dot_quote(caption)};",
      '    color="gray60";',
  ]
  for state, node_id in enumerate(ids):
    color = _INPUT_COLOR if state < 2 else _NODE_COLOR
    lines.append(
        f"    {node_id} [label={_dot_quote(_state_label(state))},"
        f" fillcolor={color[0]}];"
    )
  lines.append(
      f"    {out_id} [label={_dot_quote(_OUTPUT_LABEL)},"
      f" fillcolor={_OUTPUT_COLOR[0]}];"
  )
  lines.append(f"    {{rank=same; {ids[0]}; {ids[1]};}}")
  for j, (op_name, source) in enumerate(edges):
    lines.append(
        f"    {ids[source]} -> {ids[2 + j // 2]} [label={_dot_quote(op_name)}];"
    )
  for state in concat:
    lines.append(f"    {ids[state]} -> {out_id};")
  lines.append("  }")
  return lines


def genotype_dot(genotype, *, title: str | None = None) -> str:
  """The graphviz DOT source of a genotype's normal and reduction cell.

  One directed graph, left to right, with a cluster per cell as in the DARTS
  figures: nodes ``<cell>_in0`` and ``<cell>_in1`` (labelled ``c_{k-2}``,
  ``c_{k-1}``), ``<cell>_0 .. <cell>_{n-1}`` (labelled ``0 .. n-1``) and
  ``<cell>_out`` (``c_{k}``), where ``<cell>`` is ``normal`` or ``reduce``.
  Every genotype edge is a line ``src -> dst [label="op_name"];``; the edges
  into the output carry no label.

  Args:
    genotype: a ``Genotype``, a zoo name or a genotype ``.json`` file.
    title: an optional caption above both cells.

  Returns:
    The DOT text; ``dot -Tpng`` renders it.

  Raises:
    UserError: if the genotype cannot be resolved or is invalid.

  Example:
    >>> source = genotype_dot('DARTS_V2')
    >>> 'normal_in0 -> normal_0 [label="sep_conv_3x3"];' in source
    True
  """
  geno = genotype_lib.resolve(genotype)
  lines = [
      "digraph genotype {",
      '  graph [rankdir=LR, fontname="Times", fontsize=24, labelloc=t];',
      '  node [style=filled, shape=rect, align=center, fontsize=20,'
      ' height=0.5, width=0.5, penwidth=2, fontname="Times"];',
      '  edge [fontsize=20, fontname="Times"];',
  ]
  if title is not None:
    lines.append(f"  label={_dot_quote(str(title))};")
  # dot stacks the clusters of a left-to-right graph bottom-up in the order
  # they are written: the reduction cell comes first so the normal cell is
  # drawn on top, as in the matplotlib drawing.
  for cell, caption in reversed(_CELLS):
    lines += _cell_dot(
        cell,
        caption,
        getattr(geno, cell),
        getattr(geno, f"{cell}_concat"),
        geno.steps,
    )
  lines.append("}")
  return "\n".join(lines) + "\n"


def _render_dot(source: str, path: str, fmt: str, dot_binary: str) -> None:
  """Renders DOT source with graphviz, raising UserError if ``dot`` fails."""

  def write(tmp: str) -> None:
    try:
      result = subprocess.run(
          [dot_binary, f"-T{fmt}", "-o", tmp],
          input=source.encode("utf-8"),
          capture_output=True,
          timeout=_DOT_TIMEOUT_S,
          check=False,
      )
    except subprocess.TimeoutExpired:
      raise UserError(
          f"graphviz dot took over {_DOT_TIMEOUT_S}s to render {path!r}; pass"
          " backend='matplotlib'"
      ) from None
    except OSError as e:
      raise UserError(
          f"cannot run graphviz {dot_binary!r} ({e.strerror or _one_line(e)});"
          " reinstall graphviz or pass backend='matplotlib'"
      ) from None
    if result.returncode != 0 or not os.path.isfile(tmp) or not os.path.getsize(
        tmp
    ):
      lines = result.stderr.decode("utf-8", "replace").strip().splitlines()
      reason = lines[0] if lines else f"exit status {result.returncode}"
      raise UserError(
          f"graphviz dot failed to write {fmt} ({reason}); pass"
          " backend='matplotlib' or another output format"
      )

  _write_atomically(path, write)


# --- genotype: matplotlib -----------------------------------------------------

# Sizes in inches: one data unit is one inch on the page.
_LAYER_GAP = 2.1
_ROW_GAP = 0.9
_NODE_HEIGHT = 0.34
_NODE_FONT = 11
_EDGE_FONT = 8
_MARGIN = 0.45
_CAPTION_HEIGHT = 0.45


def _text_size(text: str, fontsize: float) -> tuple[float, float]:
  """A generous estimate of a text's (width, height) in inches."""
  return 0.62 * fontsize / 72 * len(text) + 0.08, 1.5 * fontsize / 72


def _node_width(label: str) -> float:
  return max(0.5, _text_size(label, _NODE_FONT)[0] + 0.12)


def _cell_positions(edges, steps: int) -> dict[int, tuple[float, float]]:
  """Layered positions of the states 0..steps+1 and the output (key -1).

  A state's layer is the longest path from the cell inputs; within a layer
  nodes are ordered by the mean height of their inputs, which keeps most
  edges from crossing.
  """
  layer = {0: 0, 1: 0}
  for node in range(steps):
    inputs = (edges[2 * node][1], edges[2 * node + 1][1])
    layer[node + 2] = 1 + max(layer[i] for i in inputs)
  out_layer = 1 + max(layer.values())
  tallest = max(list(layer.values()).count(d) for d in range(1, out_layer))
  # The inputs span the tallest layer, so that their fan-outs stay open.
  spread = max(1, tallest - 1) * _ROW_GAP / 2
  positions = {0: (0.0, spread), 1: (0.0, -spread)}

  def mean_height(state: int) -> float:
    inputs = (edges[2 * state - 4][1], edges[2 * state - 3][1])
    return sum(positions[i][1] for i in inputs) / 2

  for depth in range(1, out_layer):
    members = [s for s in range(2, steps + 2) if layer[s] == depth]
    members.sort(key=lambda s: (-mean_height(s), s))
    for rank, state in enumerate(members):
      y = ((len(members) - 1) / 2 - rank) * _ROW_GAP
      positions[state] = (depth * _LAYER_GAP, y)
  positions[-1] = (out_layer * _LAYER_GAP, 0.0)
  return positions


def _control_point(start, end, rad: float) -> np.ndarray:
  """The control point of an edge's quadratic Bezier curve.

  As in matplotlib's ``arc3`` connection style: the midpoint, moved sideways
  by ``rad`` times the edge's length (``rad=0`` is a straight line).
  """
  (x1, y1), (x2, y2) = start, end
  return np.array(
      ((x1 + x2) / 2 + rad * (y2 - y1), (y1 + y2) / 2 - rad * (x2 - x1))
  )


def _bezier(start, end, rad: float, t) -> np.ndarray:
  """Points at parameters ``t`` of the curved edge from ``start`` to ``end``."""
  t = np.asarray(t, dtype=np.float64)[:, None]
  return (
      (1 - t) ** 2 * np.array(start)
      + 2 * (1 - t) * t * _control_point(start, end, rad)
      + t**2 * np.array(end)
  )


def _overlap(a, b) -> float:
  """The overlap area of two boxes ``(x0, y0, x1, y1)``."""
  width = min(a[2], b[2]) - max(a[0], b[0])
  height = min(a[3], b[3]) - max(a[1], b[1])
  return max(width, 0.0) * max(height, 0.0)


def _box(center, size, pad: float = 0.0):
  (x, y), (w, h) = center, size
  return (x - w / 2 - pad, y - h / 2 - pad, x + w / 2 + pad, y + h / 2 + pad)


# Where along an edge its label may sit, most preferred first.
_LABEL_POSITIONS = sorted(
    np.linspace(0.2, 0.8, 16), key=lambda t: abs(t - 0.62)
)


def _route_cell(edges, concat, steps: int):
  """Lays out one cell: node boxes, curved edges and their label positions.

  Each edge takes the least curved ``arc3`` that keeps clear of the other
  nodes (parallel edges take different curvatures). Each label then sits at
  the point along its edge where it covers the fewest nodes, labels and
  other edges, preferring the half nearer the target, where the edges of a
  fan-out have spread apart.

  Returns:
    ``(nodes, arrows, labels)``: ``nodes`` maps a state (-1 for the output)
    to ``(label, center, size)``; ``arrows`` lists ``(src, dst, rad)``;
    ``labels`` lists ``(op_name, center)``.
  """
  positions = _cell_positions(edges, steps)
  nodes = {}
  for state, center in positions.items():
    label = _OUTPUT_LABEL if state == -1 else _state_label(state)
    nodes[state] = (label, center, (_node_width(label), _NODE_HEIGHT))
  node_boxes = {s: _box(c, size, pad=0.06) for s, (_, c, size) in nodes.items()}
  links = [(src, 2 + j // 2, name) for j, (name, src) in enumerate(edges)]
  links += [(state, -1, None) for state in concat]
  samples = np.linspace(0.08, 0.92, 40)
  rads = (0.0, 0.2, -0.2, 0.35, -0.35, 0.5, -0.5, 0.7, -0.7)
  used: set[tuple[int, int, float]] = set()
  arrows, curves = [], []
  for src, dst, _ in links:
    start, end = positions[src], positions[dst]
    others = [box for s, box in node_boxes.items() if s not in (src, dst)]

    def clash(rad: float) -> tuple[int, bool]:
      """(nodes crossed, whether it runs along an edge already drawn)."""
      points = _bezier(start, end, rad, samples)
      crossed = sum(int(_inside(points, box).any()) for box in others)
      if not curves:
        return crossed, False
      drawn = np.concatenate(curves)
      gaps = np.linalg.norm(points[:, None] - drawn[None], axis=-1).min(axis=1)
      return crossed, int((gaps < 0.09).sum()) > 3

    best = None
    for rad in (r for r in rads if (src, dst, r) not in used):
      cost = clash(rad)
      if best is None or cost < best[0]:
        best = (cost, rad)
      if cost == (0, False):
        break
    rad = best[1]
    used.add((src, dst, rad))
    arrows.append((src, dst, rad))
    curves.append(_bezier(start, end, rad, np.linspace(0, 1, 60)))
  labels, label_boxes = [], []
  for index, ((src, dst, name), (_, _, rad)) in enumerate(zip(links, arrows)):
    if name is None:
      continue
    size = _text_size(name, _EDGE_FONT)
    other_points = np.concatenate(
        [c for i, c in enumerate(curves) if i != index]
    )
    best = None
    for t in _LABEL_POSITIONS:
      center = tuple(_bezier(positions[src], positions[dst], rad, [t])[0])
      box = _box(center, size)
      cost = (
          100 * sum(_overlap(box, b) for b in label_boxes)
          + 100 * sum(_overlap(box, b) for b in node_boxes.values())
          + 0.01 * int(_inside(other_points, box).sum())
      )
      if best is None or cost < best[0] - 1e-9:
        best = (cost, center, box)
    labels.append((name, best[1]))
    label_boxes.append(best[2])
  return nodes, arrows, labels


def _inside(points: np.ndarray, box) -> np.ndarray:
  return (
      (points[:, 0] > box[0]) & (points[:, 0] < box[2])
      & (points[:, 1] > box[1]) & (points[:, 1] < box[3])
  )


def _extent(nodes, arrows, labels) -> tuple[float, float, float, float]:
  """The bounding box ``(x0, y0, x1, y1)`` of a routed cell, in inches."""
  boxes = [_box(c, size) for _, c, size in nodes.values()]
  boxes += [_box(c, _text_size(name, _EDGE_FONT)) for name, c in labels]
  centers = {s: c for s, (_, c, _) in nodes.items()}
  for src, dst, rad in arrows:
    points = _bezier(centers[src], centers[dst], rad, np.linspace(0, 1, 21))
    boxes.append((*points.min(axis=0), *points.max(axis=0)))
  boxes = np.array(boxes)
  return (*boxes[:, :2].min(axis=0), *boxes[:, 2:].max(axis=0))


def _arrow_path(source, target, rad: float):
  """The visible part of an edge, between its two node boxes, as a Path.

  Clipping here, rather than with ``FancyArrowPatch(patchA=..., patchB=...)``
  at draw time, keeps drawing fast: matplotlib's clipping bisects with a
  slow point-in-patch test.
  """
  from matplotlib import path as mpath

  (_, start, size_a), (_, end, size_b) = source, target
  t = np.linspace(0, 1, 401)
  points = _bezier(start, end, rad, t)
  outside = ~_inside(points, _box(start, size_a, pad=0.03))
  outside &= ~_inside(points, _box(end, size_b, pad=0.03))
  kept = t[outside]
  t0, t1 = (kept[0], kept[-1]) if kept.size else (0.0, 1.0)
  control = _control_point(start, end, rad)
  a, b = np.array(start), np.array(end)
  # The control point of the sub-curve on [t0, t1] (the Bezier blossom).
  middle = (
      (1 - t0) * (1 - t1) * a + ((1 - t0) * t1 + t0 * (1 - t1)) * control
      + t0 * t1 * b
  )
  vertices = [_bezier(start, end, rad, [t0])[0], middle,
              _bezier(start, end, rad, [t1])[0]]
  codes = [mpath.Path.MOVETO, mpath.Path.CURVE3, mpath.Path.CURVE3]
  return mpath.Path(vertices, codes)


def _draw_cell(ax, caption: str, routed) -> None:
  from matplotlib import patches

  nodes, arrows, labels = routed
  colors = {-1: _OUTPUT_COLOR[1], 0: _INPUT_COLOR[1], 1: _INPUT_COLOR[1]}
  for state, (label, (x, y), (w, h)) in nodes.items():
    box = patches.FancyBboxPatch(
        (x - w / 2, y - h / 2), w, h,
        boxstyle="round,pad=0,rounding_size=0.05",
        facecolor=colors.get(state, _NODE_COLOR[1]),
        edgecolor="black",
        linewidth=1.4,
        zorder=3,
    )
    ax.add_patch(box)
    ax.text(x, y, label, ha="center", va="center", fontsize=_NODE_FONT,
            zorder=4, parse_math=False)
  for src, dst, rad in arrows:
    ax.add_patch(patches.FancyArrowPatch(
        path=_arrow_path(nodes[src], nodes[dst], rad),
        arrowstyle="-|>",
        mutation_scale=11,
        linewidth=1.1,
        color="0.25",
        zorder=2,
    ))
  for name, (x, y) in labels:
    ax.text(
        x, y, name, ha="center", va="center", fontsize=_EDGE_FONT, zorder=5,
        parse_math=False,
        bbox=dict(boxstyle="round,pad=0.12", facecolor="white",
                  edgecolor="none", alpha=0.9),
    )
  ax.text(0.02, 1.0, caption, transform=ax.transAxes, ha="left", va="bottom",
          fontsize=12)


def _matplotlib_genotype(geno, path: str, fmt: str, title: str | None) -> None:
  routed = {
      cell: _route_cell(
          getattr(geno, cell), getattr(geno, f"{cell}_concat"), geno.steps
      )
      for cell, _ in _CELLS
  }
  extents = {cell: _extent(*r) for cell, r in routed.items()}
  width = max(e[2] - e[0] for e in extents.values()) + 2 * _MARGIN
  heights = {
      cell: e[3] - e[1] + 2 * _MARGIN + _CAPTION_HEIGHT
      for cell, e in extents.items()
  }
  top = _CAPTION_HEIGHT if title is not None else 0.0
  total = sum(heights.values()) + top
  fig = _new_figure(figsize=(width, total))
  if title is not None:
    fig.suptitle(title, fontsize=14, y=1 - 0.1 / total, va="top",
                 parse_math=False)
  bottom = total - top
  for cell, caption in _CELLS:
    x0, y0, x1, y1 = extents[cell]
    height = heights[cell]
    bottom -= height
    # Axes sized in inches with equal data ranges: one data unit is one inch.
    ax = fig.add_axes(
        (0, bottom / total, 1, (height - _CAPTION_HEIGHT) / total)
    )
    ax.set_xlim(x0 - _MARGIN, x0 - _MARGIN + width)
    ax.set_ylim(y0 - _MARGIN, y1 + _MARGIN)
    ax.set_axis_off()
    _draw_cell(ax, caption, routed[cell])
  _write_atomically(path, lambda tmp: _save_figure(fig, tmp, fmt))


def plot_genotype(
    genotype,
    out_path: str | os.PathLike,
    *,
    title: str | None = None,
    backend: str = "auto",
) -> str:
  """Draws a genotype's normal and reduction cell, as in the DARTS paper.

  The picture follows Fig. 4 and 5 of Liu et al. (ICLR 2019): inputs
  ``c_{k-2}`` and ``c_{k-1}`` on the left, intermediate nodes ``0 .. n-1``,
  the output ``c_{k}`` on the right fed by the concatenated nodes, every edge
  labelled with its op; the normal cell above the reduction cell.

  Args:
    genotype: a ``Genotype``, a zoo name (``'DARTS_V2'``) or a genotype
      ``.json`` file.
    out_path: the image to write; its extension picks the format: ``.png``,
      ``.svg`` or ``.pdf`` (``.dot``/``.gv`` write the graphviz source).
      Parent directories are created; the file is replaced atomically.
    title: an optional caption above both cells.
    backend: ``'graphviz'`` renders with the ``dot`` program,
      ``'matplotlib'`` draws with matplotlib, ``'auto'`` uses graphviz when
      ``dot`` is on the PATH and matplotlib otherwise (or if ``dot`` fails).

  Returns:
    ``out_path`` as a string.

  Raises:
    UserError: for an unknown extension or backend, a genotype that cannot
      be resolved, ``backend='graphviz'`` without a working ``dot``, or a
      file that cannot be written.

  Example:
    >>> plot_genotype('NASNet', '/tmp/nasnet.svg', backend='matplotlib')
    '/tmp/nasnet.svg'
  """
  path, fmt = _output_format(out_path)
  if backend not in _BACKENDS:
    raise UserError(
        f"unknown plot backend {backend!r}; use one of {', '.join(_BACKENDS)}"
    )
  geno = genotype_lib.resolve(genotype)
  if fmt == "dot":
    source = genotype_dot(geno, title=title)

    def write_source(tmp: str) -> None:
      with open(tmp, "w", encoding="utf-8") as f:
        f.write(source)

    return _write_atomically(path, write_source)
  dot_binary = shutil.which("dot") if backend != "matplotlib" else None
  if backend == "graphviz" and dot_binary is None:
    raise UserError(
        "graphviz's dot program is not on the PATH; install graphviz (e.g."
        " apt-get install graphviz) or pass backend='matplotlib'"
    )
  if dot_binary is not None:
    try:
      _render_dot(genotype_dot(geno, title=title), path, fmt, dot_binary)
      return path
    except UserError as e:
      if backend == "graphviz":
        raise
      warnings.warn(f"{e}; drawing with matplotlib instead", stacklevel=2)
  _matplotlib_genotype(geno, path, fmt, title)
  return path


# --- alphas -----------------------------------------------------------------


def _softmax(logits: np.ndarray) -> np.ndarray:
  shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
  return shifted / shifted.sum(axis=-1, keepdims=True)


def _edge_names(steps: int) -> list[tuple[int, int]]:
  """``(node, input)`` of every alpha row, in DARTS order."""
  return [(node, i) for node in range(steps) for i in range(node + 2)]


def _steps_of(rows: int) -> int | None:
  steps = 1
  while steps * (steps + 3) // 2 < rows:
    steps += 1
  return steps if steps * (steps + 3) // 2 == rows else None


def _read_npz(path: str) -> dict[str, np.ndarray]:
  fix = f"{_PRODUCER}; rerun the search or pass another run directory"
  try:
    archive = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise UserError(
        f"{path!r} is not a readable .npz archive ({_one_line(e)}); {fix}"
    ) from None
  if not isinstance(archive, np.lib.npyio.NpzFile):
    raise UserError(
        f"{path!r} holds a single array, not an .npz archive; {fix}"
    )
  arrays = {}
  with archive:
    for key in archive.files:
      try:
        arrays[key] = archive[key]
      except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(
            f"{path!r}: cannot read array {key!r} ({_one_line(e)}); {fix}"
        ) from None
  return arrays


def _alphas_data(path: str, history: bool | None):
  """Reads and checks an alphas file: ``(epochs, cells, primitives, steps)``.

  ``cells`` maps ``normal``/``reduce`` to logits of shape (epochs, edges,
  ops); a snapshot file (``history=False``) has one epoch and ``epochs`` is
  None. ``history=None`` tells the two kinds apart by an ``epochs`` array.
  """
  arrays = _read_npz(path)
  if history is None:
    history = "epochs" in arrays
  needed = ("epochs", "normal", "reduce") if history else ("normal", "reduce")
  missing = [key for key in needed if key not in arrays]
  if missing:
    present = ", ".join(map(repr, arrays)) or "no arrays"
    raise UserError(
        f"{path!r} has no array {missing[0]!r} (it has {present}); {_PRODUCER}"
        f" with arrays {', '.join(needed)}"
    )
  cells = {}
  for cell, _ in _CELLS:
    logits = arrays[cell]
    expected = "(epochs, edges, ops)" if history else "(edges, ops)"
    if logits.dtype.kind not in "iuf":
      raise UserError(
          f"array {cell!r} in {path!r} holds {logits.dtype}, not numbers; save"
          f" the raw alpha logits as a float array of shape {expected}"
      )
    logits = logits.astype(np.float64)
    if not history:
      logits = logits[None]
    if logits.ndim != 3 or 0 in logits.shape:
      raise UserError(
          f"array {cell!r} in {path!r} has shape {arrays[cell].shape}; expected"
          f" a non-empty {expected}, one row per edge and one column per op"
      )
    bad = np.argwhere(~np.isfinite(logits))
    if bad.size:
      where = f"epoch row {bad[0][0]}, " if history else ""
      raise UserError(
          f"array {cell!r} in {path!r} holds NaN or inf ({where}edge"
          f" {bad[0][1]}); the search diverged, so lower its learning rates"
      )
    cells[cell] = logits
  if cells["normal"].shape != cells["reduce"].shape:
    raise UserError(
        f"{path!r} has 'normal' of shape {arrays['normal'].shape} but 'reduce'"
        f" of shape {arrays['reduce'].shape}; both cells must match"
    )
  num_epochs, rows, num_ops = cells["normal"].shape
  steps = _steps_of(rows)
  if steps is None:
    raise UserError(
        f"{path!r} has {rows} edge rows, but a cell with n nodes has"
        " n*(n+3)/2 edges (2, 5, 9, 14, 20, ...)"
    )
  if "primitives" in arrays:
    names = arrays["primitives"]
    if names.ndim != 1 or names.dtype.kind not in "US":
      raise UserError(
          f"array 'primitives' in {path!r} must be a 1-D array of op names,"
          f" got {names.dtype} of shape {names.shape}"
      )
    primitives = [str(n.decode() if isinstance(n, bytes) else n) for n in names]
  else:
    primitives = list(ops.PRIMITIVES)
  if len(primitives) != num_ops:
    raise UserError(
        f"{path!r} has {num_ops} op columns but {len(primitives)} primitives"
        f" ({', '.join(primitives)}); save a matching 'primitives' array"
    )
  epochs = None
  if history:
    epochs = arrays["epochs"]
    if epochs.ndim != 1 or not np.issubdtype(epochs.dtype, np.number):
      raise UserError(
          f"array 'epochs' in {path!r} must be a 1-D numeric array, got"
          f" {epochs.dtype} of shape {epochs.shape}"
      )
    if len(epochs) != num_epochs:
      raise UserError(
          f"{path!r} has {len(epochs)} epochs but {num_epochs} alpha snapshots;"
          " the arrays must have one entry per epoch"
      )
  return epochs, cells, primitives, steps


def _op_colors(count: int) -> list:
  from matplotlib import colormaps

  cmap = colormaps["tab10" if count <= 10 else "tab20"]
  return [cmap(i % cmap.N) for i in range(count)]


def _edge_title(node: int, source: int) -> str:
  return f"{_state_label(source)} \u2192 {node}"


# The grid of the history plot, in inches. Laid out by hand: matplotlib's
# constrained layout takes seconds on forty small axes.
_PANEL_WIDTH = 1.6
_PANEL_HEIGHT = 1.0
_PANEL_GAP = 0.3
_PANEL_TITLE = 0.3
_GRID_LEFT = 0.65
_AXIS_LABELS = 0.45
_HEADING = 0.45


def _history_figure(epochs, cells, primitives, steps, title):
  from matplotlib import ticker

  weights = {cell: _softmax(logits) for cell, logits in cells.items()}
  top = max(float(w.max()) for w in weights.values())
  ymax = min(1.0, math.ceil(top * 10 + 0.5) / 10)
  first, last = float(np.min(epochs)), float(np.max(epochs))
  pad = 0.04 * (last - first) if last > first else 0.5
  colors = _op_colors(len(primitives))
  marker = "o" if len(epochs) <= 25 else None
  cols = steps + 1
  legend_rows = math.ceil(len(primitives) / 4)
  cell_height = (
      _HEADING + steps * (_PANEL_TITLE + _PANEL_HEIGHT) + _AXIS_LABELS
  )
  width = _GRID_LEFT + cols * _PANEL_WIDTH + (cols - 1) * _PANEL_GAP + 0.2
  header = _HEADING if title is not None else 0.1
  height = header + 2 * cell_height + 0.25 * legend_rows + 0.2
  fig = _new_figure(figsize=(width, height))
  if title is not None:
    fig.suptitle(title, fontsize=13, y=1 - 0.12 / height, va="top",
                 parse_math=False)
  handles = []
  cursor = height - header
  for cell, caption in _CELLS:
    fig.text(0.5, (cursor - 0.1) / height, caption, ha="center", va="top",
             fontsize=12)
    row_top = cursor - _HEADING
    for row, (node, source) in enumerate(_edge_names(steps)):
      bottom = row_top - (node + 1) * (_PANEL_TITLE + _PANEL_HEIGHT)
      left = _GRID_LEFT + source * (_PANEL_WIDTH + _PANEL_GAP)
      ax = fig.add_axes((left / width, bottom / height, _PANEL_WIDTH / width,
                         _PANEL_HEIGHT / height))
      for k, name in enumerate(primitives):
        (line,) = ax.plot(
            epochs, weights[cell][:, row, k], color=colors[k], label=name,
            linewidth=1.2, marker=marker, markersize=2.5,
        )
        if len(handles) < len(primitives):
          handles.append(line)
      # A plain text, not set_title: titles cost a layout pass per axes.
      ax.text(0.5, 1.03, _edge_title(node, source), transform=ax.transAxes,
              ha="center", va="bottom", fontsize=8)
      ax.xaxis.set_major_locator(
          ticker.MaxNLocator(4, integer=True, min_n_ticks=1))
      ax.yaxis.set_major_locator(ticker.MaxNLocator(3))
      ax.set_xlim(first - pad, last + pad)
      ax.set_ylim(0, ymax)
      ax.tick_params(labelsize=7, length=2, pad=2)
      ax.grid(alpha=0.3)
      if source == 0:
        ax.set_ylabel("weight", fontsize=8, labelpad=2)
      else:
        ax.tick_params(labelleft=False)
      if node == steps - 1:
        ax.set_xlabel("epoch", fontsize=8, labelpad=1)
      else:
        ax.tick_params(labelbottom=False)
    cursor -= cell_height
  fig.legend(handles, primitives, loc="lower center", bbox_to_anchor=(0.5, 0),
             ncol=min(len(primitives), 4), fontsize=9, frameon=False)
  return fig


def _snapshot_figure(cells, primitives, steps, title):
  weights = {cell: _softmax(logits[0]) for cell, logits in cells.items()}
  rows = _edge_names(steps)
  vmax = max(float(w.max()) for w in weights.values())
  # Laid out by hand in inches, like the history grid.
  panel_width, panel_height = 0.55 * len(primitives), 0.3 * len(rows)
  left, gap, right = 1.0, 0.3, 1.1
  below = _text_size(max(primitives, key=len), 8)[0] * 0.8 + 0.25
  above = 0.45 + (_HEADING if title is not None else 0.0)
  width = left + 2 * panel_width + gap + right
  height = below + panel_height + above
  fig = _new_figure(figsize=(width, height))
  if title is not None:
    fig.suptitle(title, fontsize=13, y=1 - 0.12 / height, va="top",
                 parse_math=False)
  image = None
  for i, (cell, caption) in enumerate(_CELLS):
    ax = fig.add_axes((
        (left + i * (panel_width + gap)) / width, below / height,
        panel_width / width, panel_height / height,
    ))
    matrix = weights[cell]
    image = ax.imshow(matrix, vmin=0, vmax=vmax, cmap="viridis", aspect="auto")
    ax.text(0.5, 1.02, caption, transform=ax.transAxes, ha="center",
            va="bottom", fontsize=11)
    ax.set_xticks(range(len(primitives)), primitives, rotation=50, ha="right",
                  rotation_mode="anchor", fontsize=8)
    ax.set_yticks(range(len(rows)), [_edge_title(n, s) for n, s in rows],
                  fontsize=8)
    ax.tick_params(labelleft=i == 0, length=2)
    for (r, k), value in np.ndenumerate(matrix):
      ax.text(k, r, f"{value:.2f}", ha="center", va="center", fontsize=6,
              color="black" if value > 0.6 * vmax else "white")
  colorbar_axes = fig.add_axes((
      (width - right + 0.2) / width, below / height, 0.18 / width,
      panel_height / height,
  ))
  fig.colorbar(image, cax=colorbar_axes, label="softmax weight")
  return fig


def plot_alphas(
    run_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    title: str | None = None,
) -> str:
  """Plots the softmax weights of the alphas of a search run.

  With ``alphas_history.npz`` in ``run_dir`` (arrays ``epochs`` (E,),
  ``normal`` and ``reduce`` (E, edges, ops) of raw logits, optionally
  ``primitives``), draws a grid with one panel per edge, for the normal and
  the reduction cell: node ``i``'s panels on row ``i``, one per input, each
  showing every op's softmax weight against the epoch in one colour per op,
  with a shared legend. With only ``alphas.npz`` (arrays ``normal`` and
  ``reduce`` (edges, ops), one snapshot) draws a heatmap of the final
  weights instead. ``run_dir`` may also name one of these files.

  Args:
    run_dir: the ``--workdir`` of a ``dnas search`` run.
    out_path: the image to write, ``.png``, ``.svg`` or ``.pdf``; written
      atomically, parent directories created.
    title: an optional caption above the plot.

  Returns:
    ``out_path`` as a string.

  Raises:
    UserError: naming the file, if neither file is there, or one cannot be
      read or holds arrays of the wrong shape, NaN or inf.

  Example:
    >>> import numpy as np, os
    >>> os.makedirs('/tmp/run', exist_ok=True)
    >>> np.savez('/tmp/run/alphas_history.npz', epochs=np.arange(3),
    ...          normal=np.zeros((3, 14, 8)), reduce=np.zeros((3, 14, 8)))
    >>> plot_alphas('/tmp/run', '/tmp/alphas.png')
    '/tmp/alphas.png'
  """
  path, fmt = _output_format(out_path)
  if fmt == "dot":
    raise UserError(
        f"plot_alphas draws an image; end {path!r} with .png, .svg or .pdf"
    )
  if not isinstance(run_dir, (str, os.PathLike)):
    raise UserError(
        f"expected a search run directory, got {type(run_dir).__name__}"
    )
  run_dir = os.fspath(run_dir)
  if os.path.isfile(run_dir):
    source = run_dir
  elif os.path.isdir(run_dir):
    history = os.path.join(run_dir, _HISTORY_FILE)
    snapshot = os.path.join(run_dir, _SNAPSHOT_FILE)
    source = history if os.path.exists(history) else snapshot
    if not os.path.exists(source):
      raise UserError(
          f"no {_HISTORY_FILE} or {_SNAPSHOT_FILE} in {run_dir!r};"
          " `dnas search --workdir DIR` writes them there, so pass the"
          " workdir of a search"
      )
  else:
    raise UserError(
        f"run directory {run_dir!r} does not exist; pass the workdir of a"
        " search (`dnas search --workdir DIR` writes alphas_history.npz there)"
    )
  kind = None if source == run_dir else source.endswith(_HISTORY_FILE)
  epochs, cells, primitives, steps = _alphas_data(source, kind)
  if epochs is not None:
    fig = _history_figure(epochs, cells, primitives, steps, title)
  else:
    fig = _snapshot_figure(cells, primitives, steps, title)
  return _write_atomically(path, lambda tmp: _save_figure(fig, tmp, fmt))
