"""Tests for dnas.plot: the DOT source, both cell drawings and the alpha plots.

Every drawing is checked against the genotype it came from: the DOT source is
parsed back edge by edge, and the SVG files (whose text stays text) must hold
exactly one label per edge and per node.
"""

import collections
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import numpy as np
from PIL import Image
import pytest

from dnas import genotype
from dnas import plot
from dnas.errors import UserError
from dnas.ops import PRIMITIVES

HAS_DOT = shutil.which("dot") is not None
needs_dot = pytest.mark.skipif(not HAS_DOT, reason="graphviz dot not installed")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SVG_TEXT = "{http://www.w3.org/2000/svg}text"
CELLS = ("normal", "reduce")
ZOO_CASES = ["DARTS_V2", "NASNet"]

# src -> dst, with an optional quoted label that may contain \" escapes.
DOT_EDGE = re.compile(
    r'^\s*(\w+) -> (\w+)(?: \[label="((?:[^"\\]|\\.)*)"\])?;$', re.M
)
DOT_NODE = re.compile(
    r'^\s*(\w+) \[label="((?:[^"\\]|\\.)*)", fillcolor=\w+\];$', re.M
)


def state_label(state):
  return {0: "c_{k-2}", 1: "c_{k-1}"}.get(state, str(state - 2))


def expected_dot_edges(geno):
  """The edges the DOT source must hold, worked out from the genotype."""
  edges = []
  for cell in CELLS:
    ids = [f"{cell}_in0", f"{cell}_in1"] + [
        f"{cell}_{node}" for node in range(geno.steps)
    ]
    for j, (op_name, source) in enumerate(getattr(geno, cell)):
      edges.append((ids[source], ids[2 + j // 2], op_name))
    for state in getattr(geno, f"{cell}_concat"):
      edges.append((ids[state], f"{cell}_out", None))
  return collections.Counter(edges)


def expected_texts(geno, title=None):
  """Every text a drawing of both cells shows: one label per edge and node."""
  texts = collections.Counter(["normal cell", "reduction cell"])
  for cell in CELLS:
    texts.update(op_name for op_name, _ in getattr(geno, cell))
    texts.update(state_label(s) for s in range(geno.steps + 2))
    texts["c_{k}"] += 1
  if title is not None:
    texts[title] += 1
  return texts


def svg_texts(path):
  root = ET.parse(path).getroot()
  return collections.Counter("".join(t.itertext()) for t in root.iter(SVG_TEXT))


def assert_png(path, min_side=300):
  with open(path, "rb") as f:
    data = f.read()
  assert data[:8] == PNG_MAGIC
  assert len(data) > 10_000
  with Image.open(path) as image:
    image.load()
    width, height = image.size
    gray = np.asarray(image.convert("L"))
  assert min_side <= width <= 6000 and min_side <= height <= 6000
  # Something is drawn: a real share of the pixels is not background.
  assert (gray < 200).mean() > 0.01
  return width, height


def assert_one_line_error(excinfo, *fragments):
  message = str(excinfo.value)
  assert "\n" not in message
  for fragment in fragments:
    assert fragment in message


def test_zoo_cases_cover_five_nodes_and_ops_outside_primitives():
  nasnet = genotype.resolve("NASNet")
  assert nasnet.steps == 5
  assert {op for op, _ in nasnet.reduce} - set(PRIMITIVES) == {"sep_conv_7x7"}


# --- genotype_dot -----------------------------------------------------------


@pytest.mark.parametrize("name", ZOO_CASES)
def test_dot_source_holds_every_edge_with_its_op(name):
  geno = genotype.resolve(name)
  source = plot.genotype_dot(name)
  edges = collections.Counter(
      (src, dst, label or None) for src, dst, label in DOT_EDGE.findall(source)
  )
  assert edges == expected_dot_edges(geno)
  assert sum(edges.values()) == 2 * (2 * geno.steps) + len(
      geno.normal_concat
  ) + len(geno.reduce_concat)
  assert source.count("->") == sum(edges.values())


@pytest.mark.parametrize("name", ZOO_CASES)
def test_dot_source_holds_every_node_with_its_label(name):
  geno = genotype.resolve(name)
  nodes = dict(DOT_NODE.findall(plot.genotype_dot(geno)))
  expected = {}
  for cell in CELLS:
    expected[f"{cell}_in0"] = "c_{k-2}"
    expected[f"{cell}_in1"] = "c_{k-1}"
    expected.update({f"{cell}_{i}": str(i) for i in range(geno.steps)})
    expected[f"{cell}_out"] = "c_{k}"
  assert nodes == expected
  assert "cluster_normal" in plot.genotype_dot(geno)


def test_dot_source_escapes_the_title():
  source = plot.genotype_dot("DARTS", title='search "7" \\ final')
  assert 'label="search \\"7\\" \\\\ final";' in source


def test_dot_source_accepts_a_genotype_file(tmp_path):
  path = tmp_path / "g.json"
  genotype.from_zoo("PDARTS").save(path)
  assert plot.genotype_dot(str(path)) == plot.genotype_dot("PDARTS")


# --- plot_genotype: matplotlib ----------------------------------------------


@pytest.mark.parametrize("name", ZOO_CASES)
def test_matplotlib_png_decodes(tmp_path, name):
  out = tmp_path / "cell.png"
  assert plot.plot_genotype(name, out, backend="matplotlib") == str(out)
  width, height = assert_png(out)
  # Two cells stacked, each wider than tall.
  assert 0.4 < width / height < 3


@pytest.mark.parametrize("name", ZOO_CASES)
def test_matplotlib_svg_shows_every_edge_and_node_label(tmp_path, name):
  out = tmp_path / "cell.svg"
  title = f"{name} <cells> & $x$"
  plot.plot_genotype(name, out, title=title, backend="matplotlib")
  assert svg_texts(out) == expected_texts(genotype.resolve(name), title)


def test_matplotlib_pdf(tmp_path):
  out = tmp_path / "sub" / "cell.PDF"
  plot.plot_genotype("DARTS_V2", out, backend="matplotlib")
  with open(out, "rb") as f:
    assert f.read(5) == b"%PDF-"


@pytest.mark.parametrize("name", genotype.zoo_names())
def test_matplotlib_layout_is_legible(name):
  geno = genotype.resolve(name)
  for cell in CELLS:
    edges, concat = getattr(geno, cell), getattr(geno, f"{cell}_concat")
    nodes, arrows, labels = plot._route_cell(edges, concat, geno.steps)
    assert len(nodes) == geno.steps + 3
    assert len(arrows) == len(edges) + len(concat)
    assert sorted(name for name, _ in labels) == sorted(op for op, _ in edges)
    node_boxes = [plot._box(c, size) for _, c, size in nodes.values()]
    label_boxes = [
        plot._box(c, plot._text_size(op, plot._EDGE_FONT)) for op, c in labels
    ]
    boxes = node_boxes + label_boxes
    for i, a in enumerate(boxes):
      for b in boxes[i + 1:]:
        assert plot._overlap(a, b) == 0, (name, cell, a, b)


def test_writes_atomically_and_replaces(tmp_path):
  out = tmp_path / "cell.png"
  out.write_bytes(b"old")
  plot.plot_genotype("DARTS_V2", out, backend="matplotlib")
  assert out.read_bytes()[:8] == PNG_MAGIC
  assert os.listdir(tmp_path) == ["cell.png"]


def test_dot_extension_writes_the_source(tmp_path):
  out = tmp_path / "cell.dot"
  plot.plot_genotype("NASNet", out, title="n")
  assert out.read_text() == plot.genotype_dot("NASNet", title="n")


# --- plot_genotype: graphviz ------------------------------------------------


@needs_dot
@pytest.mark.parametrize("name", ZOO_CASES)
def test_graphviz_renders_every_format(tmp_path, name):
  assert_png(plot.plot_genotype(name, tmp_path / "c.png", backend="graphviz"))
  with open(plot.plot_genotype(name, tmp_path / "c.pdf", backend="graphviz"),
            "rb") as f:
    assert f.read(5) == b"%PDF-"
  svg = plot.plot_genotype(name, tmp_path / "c.svg", title="t",
                           backend="graphviz")
  assert "<!-- Generated by graphviz" in open(svg).read()
  assert svg_texts(svg) == expected_texts(genotype.resolve(name), "t")
  assert sorted(os.listdir(tmp_path)) == ["c.pdf", "c.png", "c.svg"]


@needs_dot
@pytest.mark.parametrize("name", genotype.zoo_names())
def test_graphviz_draws_the_normal_cell_on_top(name):
  layout = subprocess.run(
      ["dot", "-Tplain"], input=plot.genotype_dot(name), text=True,
      capture_output=True, check=True, timeout=30,
  ).stdout
  heights = collections.defaultdict(list)
  for line in layout.splitlines():
    if line.startswith("node "):
      _, node_id, _, y = line.split()[:4]
      heights[node_id.split("_")[0]].append(float(y))
  assert min(heights["normal"]) > max(heights["reduce"])


def test_auto_uses_matplotlib_without_dot(tmp_path, monkeypatch):
  monkeypatch.setattr(shutil, "which", lambda name: None)
  out = plot.plot_genotype("DARTS_V2", tmp_path / "c.svg")
  assert "https://matplotlib.org" in open(out).read()


def broken_dot(directory):
  """A stand-in for graphviz's dot that fails as a broken install does."""
  path = directory / "dot"
  path.write_text("#!/bin/sh\necho 'Error: no renderer' >&2\nexit 1\n")
  path.chmod(0o755)
  return str(path)


def test_auto_falls_back_when_dot_fails(tmp_path, monkeypatch):
  dot = broken_dot(tmp_path)
  monkeypatch.setattr(shutil, "which", lambda name: dot)
  out_dir = tmp_path / "out"
  with pytest.warns(UserWarning, match="drawing with matplotlib instead"):
    out = plot.plot_genotype("DARTS_V2", out_dir / "c.svg")
  assert "https://matplotlib.org" in open(out).read()
  assert os.listdir(out_dir) == ["c.svg"]


def test_graphviz_backend_errors(tmp_path, monkeypatch):
  dot = broken_dot(tmp_path)
  monkeypatch.setattr(shutil, "which", lambda name: dot)
  out_dir = tmp_path / "out"
  with pytest.raises(UserError) as excinfo:
    plot.plot_genotype("DARTS_V2", out_dir / "c.png", backend="graphviz")
  assert_one_line_error(
      excinfo, "graphviz dot failed", "Error: no renderer",
      "backend='matplotlib'",
  )
  assert os.listdir(out_dir) == []  # no image, no temporary file
  monkeypatch.setattr(shutil, "which", lambda name: None)
  with pytest.raises(UserError) as excinfo:
    plot.plot_genotype("DARTS_V2", out_dir / "c.png", backend="graphviz")
  assert_one_line_error(excinfo, "not on the PATH", "install graphviz")
  assert os.listdir(out_dir) == []


@pytest.mark.parametrize(
    "args, kwargs, fragments",
    [
        (("DARTS_V2", "cell.jpg"), {}, (".jpg", ".png, .svg, .pdf")),
        (("DARTS_V2", "cell"), {}, ("extension",)),
        (("DARTS_V2", 7), {}, ("file name",)),
        (("DARTS_V2", "cell.png"), {"backend": "tikz"}, ("'tikz'", "auto")),
        (("NoSuchNet", "cell.png"), {}, ("NoSuchNet", "DARTS_V2")),
        (("missing.json", "cell.png"), {}, ("missing.json",)),
    ],
)
def test_plot_genotype_bad_inputs(tmp_path, monkeypatch, args, kwargs,
                                  fragments):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(UserError) as excinfo:
    plot.plot_genotype(*args, **kwargs)
  assert_one_line_error(excinfo, *fragments)
  assert os.listdir(tmp_path) == []


# --- plot_alphas --------------------------------------------------------------


def softmax(x):
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def random_history(epochs=6, edges=14, ops=8, seed=0):
  rng = np.random.default_rng(seed)
  shape = (epochs, edges, ops)
  return dict(
      epochs=np.arange(1, epochs + 1),
      normal=np.cumsum(rng.normal(0, 0.3, shape), axis=0),
      reduce=np.cumsum(rng.normal(0, 0.3, shape), axis=0),
  )


def edge_titles(steps):
  return [
      f"{state_label(source)} \u2192 {node}"
      for node in range(steps) for source in range(node + 2)
  ]


def test_plot_alphas_history_plots_softmax_weights(tmp_path):
  history = random_history()
  np.savez(tmp_path / "alphas_history.npz", **history)
  fig = plot._history_figure(
      *plot._alphas_data(str(tmp_path / "alphas_history.npz"), True), None
  )
  assert len(fig.axes) == 2 * 14
  for ax, (cell, row) in zip(
      fig.axes, [(c, r) for c in CELLS for r in range(14)]
  ):
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == PRIMITIVES
    for k, line in enumerate(lines):
      np.testing.assert_array_equal(line.get_xdata(), history["epochs"])
      np.testing.assert_allclose(
          line.get_ydata(), softmax(history[cell])[:, row, k], rtol=1e-12
      )


def test_plot_alphas_history_svg(tmp_path):
  np.savez(tmp_path / "alphas_history.npz", **random_history())
  (tmp_path / "alphas.npz").write_bytes(b"ignored: the history wins")
  out = plot.plot_alphas(tmp_path, tmp_path / "plots" / "alphas.svg",
                         title="run 1")
  texts = svg_texts(out)
  for title in edge_titles(4):
    assert texts[title] == 2
  for name in PRIMITIVES:
    assert texts[name] == 1  # the shared legend
  assert texts["normal cell"] == texts["reduction cell"] == 1
  assert texts["run 1"] == 1
  assert texts["epoch"] == 2 * 5


def test_plot_alphas_history_png_with_own_primitives(tmp_path):
  names = np.array(["none", "skip_connect", "my_conv"])
  history = random_history(epochs=1, edges=2, ops=3)
  np.savez(tmp_path / "alphas_history.npz", primitives=names, **history)
  assert_png(plot.plot_alphas(str(tmp_path), tmp_path / "a.png"), min_side=200)


def test_plot_alphas_snapshot_heatmap(tmp_path):
  history = random_history(epochs=1)
  np.savez(tmp_path / "alphas.npz", normal=history["normal"][0],
           reduce=history["reduce"][0])
  texts = svg_texts(plot.plot_alphas(tmp_path, tmp_path / "a.svg"))
  for name in PRIMITIVES:
    assert texts[name] == 2
  for title in edge_titles(4):
    assert texts[title] >= 1
  # Each cell of both heatmaps shows its weight.
  weights = np.concatenate(
      [softmax(history[c][0]).ravel() for c in CELLS]
  )
  shown = collections.Counter(f"{w:.2f}" for w in weights)
  assert all(texts[value] >= count for value, count in shown.items())


def test_plot_alphas_snapshot_png(tmp_path):
  np.savez(tmp_path / "alphas.npz", normal=np.zeros((5, 8)),
           reduce=np.ones((5, 8)))
  assert_png(plot.plot_alphas(tmp_path, tmp_path / "a.png"))


def test_plot_alphas_accepts_the_file_itself(tmp_path):
  np.savez(tmp_path / "custom.npz", **random_history(epochs=2, edges=5))
  out = plot.plot_alphas(tmp_path / "custom.npz", tmp_path / "a.png")
  assert_png(out, min_side=200)


def save_history(tmp_path, **changes):
  arrays = random_history(epochs=2)
  arrays.update(changes)
  np.savez(tmp_path / "alphas_history.npz",
           **{k: v for k, v in arrays.items() if v is not None})


@pytest.mark.parametrize(
    "setup, fragments",
    [
        (lambda d: None, ("alphas_history.npz", "dnas search --workdir")),
        (lambda d: (d / "alphas_history.npz").write_bytes(b"garbage"),
         ("alphas_history.npz", "not a readable .npz", "dnas search")),
        (lambda d: np.save(d / "alphas.npz", np.zeros((14, 8))),
         ("alphas.npz", "dnas search --workdir")),
        (lambda d: save_history(d, epochs=None),
         ("no array 'epochs'", "dnas search --workdir")),
        (lambda d: save_history(d, normal=np.zeros((2, 13, 8)),
                                reduce=np.zeros((2, 13, 8))),
         ("13 edge rows",)),
        (lambda d: save_history(d, normal=np.zeros((14, 8))),
         ("shape (14, 8)", "(epochs, edges, ops)")),
        (lambda d: save_history(d, epochs=np.arange(3)),
         ("3 epochs but 2",)),
        (lambda d: save_history(d, reduce=np.full((2, 14, 8), np.nan)),
         ("NaN", "'reduce'")),
        (lambda d: save_history(d, primitives=np.array(["a", "b"])),
         ("8 op columns but 2 primitives",)),
        (lambda d: save_history(d, normal=np.full((2, 14, 8), "x")),
         ("not numbers",)),
    ],
)
def test_plot_alphas_bad_inputs(tmp_path, setup, fragments):
  run = tmp_path / "run"
  run.mkdir()
  setup(run)
  with pytest.raises(UserError) as excinfo:
    plot.plot_alphas(run, tmp_path / "a.png")
  assert_one_line_error(excinfo, *fragments)
  assert not (tmp_path / "a.png").exists()
  assert sorted(os.listdir(tmp_path)) == ["run"]


def test_plot_alphas_bad_paths(tmp_path):
  with pytest.raises(UserError) as excinfo:
    plot.plot_alphas(tmp_path / "nope", tmp_path / "a.png")
  assert_one_line_error(excinfo, "does not exist", "dnas search --workdir")
  np.savez(tmp_path / "alphas_history.npz", **random_history(epochs=1))
  with pytest.raises(UserError) as excinfo:
    plot.plot_alphas(tmp_path, tmp_path / "a.gif")
  assert_one_line_error(excinfo, "a.gif", ".png")
  with pytest.raises(UserError) as excinfo:
    plot.plot_alphas(tmp_path, tmp_path / "a.dot")
  assert_one_line_error(excinfo, ".png, .svg or .pdf")
