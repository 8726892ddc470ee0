"""The notebooks in notebooks/ run top to bottom against a freshly built demo lake.

The demo lake is built with the real `lake demo` command; each notebook is executed with
nbclient in the ``python3`` kernel, which jupyter_client starts with this interpreter
(the virtualenv's), so a fresh clone needs nothing beyond ``make test``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
LAKE = str(Path(sys.executable).with_name("lake"))


def _outputs(notebook: Any) -> list[dict[str, Any]]:
    return [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]


def test_there_are_notebooks_to_start_from() -> None:
    names = [p.name for p in NOTEBOOKS]
    assert names == ["01-cohort-makeup.ipynb", "02-export-nifti.ipynb", "03-teaching-set.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebooks_have_no_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, path.name


@pytest.fixture(scope="module")
def demo_lake(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("demo")
    env = {"LAKE_ROOT": str(base / "lake"), "LAKE_VAULT": str(base / "vault")}
    subprocess.run(
        [LAKE, "demo", "--lake", env["LAKE_ROOT"], "--vault", env["LAKE_VAULT"],
         "--scheduler", "threads"],
        check=True, capture_output=True, timeout=600,
    )
    return env


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_against_the_demo_lake(
    path: Path, demo_lake: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in demo_lake.items():
        monkeypatch.setenv(key, value)  # the kernel inherits this process' environment
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook, timeout=600, kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    outputs = _outputs(notebook)
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images, f"{path.name} drew no figure"
    text = "\n".join(
        o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in outputs
    )
    if path.stem == "03-teaching-set":
        assert "weaker than 'teaching'" in text  # the basic-profile demo lake is refused
        assert "True" in text.splitlines()[-1]  # the re-export is byte-identical
