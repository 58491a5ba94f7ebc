"""Running the `claudecluster` command as an operator does: the installed console script, in a
process of its own, with role env files of the test's own (CLAUDECLUSTER_ENV_DIR)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT

CLI = Path(sys.executable).parent / "claudecluster"
# What a test's command must not inherit from the machine running the tests.
DROPPED = ("GITHUB_", "ANTHROPIC_", "SANDBOX_", "CLAUDECLUSTER_", "CLAUDE_")
UNSET = ("REDIS_URL", "PUBLIC_URL", "AGENT_IMAGE", "PORT", "HOST", "WORKSPACE_ROOT")


def write_env_files(env_dir: Path, **roles: dict[str, str]) -> None:
    """`web={...}, worker={...}`: each role's file, mode 0600 as the service wants it."""
    env_dir.mkdir(parents=True, exist_ok=True)
    for role, values in roles.items():
        path = env_dir / f"{role}.env"
        path.write_text("".join(f"{name}={value}\n" for name, value in values.items()))
        path.chmod(0o600)


def cli_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(DROPPED) and k not in UNSET}
    env.update(
        PYTHONPATH=str(ROOT),  # this checkout's code, whatever the venv was installed from
        CLAUDECLUSTER_ENV_DIR=str(tmp_path / "env"),
        WORKSPACE_ROOT=str(tmp_path / "workspaces"),
    )
    env.update(settings)
    return env


def run_cli(
    env: dict[str, str], *args: str, timeout: float = 300, stdin: str = ""
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CLI), *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
