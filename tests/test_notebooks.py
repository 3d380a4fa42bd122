"""Every notebook in ``notebooks/`` runs top to bottom in a fresh kernel (as in CI).

Each is executed with nbclient in a new Python kernel of this interpreter, from the notebooks
folder (so ``../configs`` resolves as it does in Jupyter), with ``MPLBACKEND=Agg``; a cell
that raises fails the test with the cell's error. Notebooks are committed without outputs, so
a diff shows only what changed in the code; this is checked too.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
CELL_TIMEOUT_S = 600  # the slowest cell (eight 20-year scenarios in 02) takes ~1 min here


def _notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def test_the_notebooks_are_there() -> None:
    names = {p.stem.split("_", 1)[0] for p in _notebooks()}
    assert {"01", "02", "03", "05"} <= names


@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("SOLARA_TELEMETRY_MIXPANEL_ENABLE", "false")
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    try:
        client.execute()
    except CellExecutionError as error:
        pytest.fail(f"{path.name}: {str(error).splitlines()[-1] if str(error) else error}\n{error}")
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors, f"{path.name}: {errors[0]['ename']}: {errors[0]['evalue']}"


@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    with_outputs = [
        i for i, cell in enumerate(notebook.cells) if cell.cell_type == "code" and cell.outputs
    ]
    assert not with_outputs, f"{path.name}: cells {with_outputs} have outputs; clear them"
