"""Executes every notebook under notebooks/ and fails on any cell error.

Each notebook runs in a fresh "python3" kernel with a temporary working
directory. The notebooks check their own results with `assert` cells, so a
wrong number fails here as a cell error.
"""

import pathlib
import sys

import jupyter_client.kernelspec
import nbclient
import nbformat
import pytest

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
KERNEL_NAME = "python3"
# Time limit for one cell, in seconds. The longest cell trains five models
# (pooled and one per hospital) in about 20 s on a two-core CPU machine.
CELL_TIMEOUT_S = 300


@pytest.fixture(scope="module", autouse=True)
def python3_kernel():
  """Installs the ipykernel spec into this environment if it is missing.

  This is `python -m ipykernel install --sys-prefix`, so the kernel runs the
  interpreter that runs the tests.
  """
  if KERNEL_NAME in jupyter_client.kernelspec.find_kernel_specs():
    return
  from ipykernel import kernelspec

  kernelspec.install(kernel_name=KERNEL_NAME, prefix=sys.prefix)


def test_notebook_dir_has_notebooks():
  assert NOTEBOOKS, f"no .ipynb files in {NOTEBOOK_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
  notebook = nbformat.read(path, as_version=4)
  nbformat.validate(notebook)
  assert notebook.metadata.kernelspec.name == KERNEL_NAME
  for index, cell in enumerate(notebook.cells):
    if cell.cell_type == "code":
      assert cell.outputs == [], f"cell {index} has outputs"
      assert cell.execution_count is None, f"cell {index} was executed"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path):
  notebook = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(
    notebook,
    timeout=CELL_TIMEOUT_S,
    kernel_name=KERNEL_NAME,
    resources={"metadata": {"path": str(tmp_path)}},
  )
  # Raises CellExecutionError, with the cell's traceback, on the first
  # failing cell.
  client.execute()
  errors = [
    output
    for cell in notebook.cells
    if cell.cell_type == "code"
    for output in cell.outputs
    if output.output_type == "error"
  ]
  assert errors == []
