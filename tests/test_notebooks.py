"""Every notebook runs top to bottom (nbclient), within a time budget."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(ROOT, "notebooks")
NAMES = sorted(n for n in os.listdir(NOTEBOOKS) if n.endswith(".ipynb"))


def test_notebooks_match_their_sources():
  """The .ipynb files are what notebooks/_build.py writes (no stale copies)."""
  import importlib.util

  spec = importlib.util.spec_from_file_location("nb_build", os.path.join(NOTEBOOKS, "_build.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  for cells, name in ((module.QUICKSTART, "01_quickstart.ipynb"), (module.REPRODUCE, "02_reproduce_darts.ipynb")):
    stored = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    assert [c.source for c in stored.cells] == [src for _, src in cells], name


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, tmp_path):
  nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
  # Run in a scratch copy of notebooks/ so outputs land in tmp_path; the
  # relative ../experiments path is kept by linking it next to it.
  work = tmp_path / "notebooks"
  work.mkdir()
  os.symlink(os.path.join(ROOT, "experiments"), tmp_path / "experiments")
  client = NotebookClient(
      nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(work)}}
  )
  client.execute()
  errors = [
      out for cell in nb.cells if cell.cell_type == "code"
      for out in cell.get("outputs", []) if out.get("output_type") == "error"
  ]
  assert not errors
  images = [
      out for cell in nb.cells if cell.cell_type == "code"
      for out in cell.get("outputs", []) if "image/png" in out.get("data", {})
  ]
  assert images, "the notebook should show its pictures"
