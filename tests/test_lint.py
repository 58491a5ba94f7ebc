"""The code style gate: ruff's lint rules and formatter, as configured in pyproject.toml."""

from __future__ import annotations

import subprocess

from tests.support import ROOT

RUFF = str(ROOT / ".venv" / "bin" / "ruff")


def test_ruff_lint_is_clean():
    result = subprocess.run([RUFF, "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_ruff_format_is_clean():
    result = subprocess.run(
        [RUFF, "format", "--check", "."], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout
