"""The import contract in pyproject.toml: rooms by concern, one-way doors, no cycles.

Run on the real tree, and on a copy with a door broken, so that the check is seen to fail.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.support import ROOT

LINT_IMPORTS = str(ROOT / ".venv" / "bin" / "lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    # PYTHONPATH first: the copy's packages, not the editable install of this checkout.
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache"],
        cwd=root,
        # Wide: the report wraps long contract names at the terminal width.
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_import_contract_is_kept():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 broken" in result.stdout


def copy_of_the_tree(tmp_path: Path) -> Path:
    for name in ("app", "jobs"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def add_import(module: Path, line: str) -> None:
    text = module.read_text()
    at = text.index("from __future__ import annotations\n") + len(
        "from __future__ import annotations\n"
    )
    module.write_text(text[:at] + line + "\n" + text[at:])


def test_a_way_back_up_breaks_the_contract(tmp_path):
    root = copy_of_the_tree(tmp_path)
    # GitHub access reaching up into the pipeline: an upward import and a cycle.
    add_import(root / "jobs/github/tracking.py", "import jobs.session.pipeline")
    result = lint_imports(root)
    assert result.returncode != 0
    assert "The rooms of jobs, top to bottom BROKEN" in result.stdout
    assert "No import cycles anywhere, between siblings at any depth BROKEN" in result.stdout
    assert "jobs.github.tracking -> jobs.session.pipeline" in result.stdout


def test_the_worker_importing_the_web_breaks_the_contract(tmp_path):
    root = copy_of_the_tree(tmp_path)
    add_import(root / "jobs/common/queue.py", "import app.enqueue")
    result = lint_imports(root)
    assert result.returncode != 0
    assert "The worker side never imports the web process BROKEN" in result.stdout


def test_a_flow_importing_another_flow_breaks_the_contract(tmp_path):
    root = copy_of_the_tree(tmp_path)
    add_import(root / "jobs/session/fork_flow.py", "import jobs.session.pull_flow")
    result = lint_imports(root)
    assert result.returncode != 0
    assert (
        "The session pipeline over its flows, over the one module that runs the agent BROKEN"
        in result.stdout
    )
