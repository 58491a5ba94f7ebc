"""`claudecluster sessions` on the whole service: a session started by a `/claude` comment is
listed while it runs, stopped from the command as `/claude stop` would, and shown as it ended.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

from tests.e2e.conftest import REPO
from tests.standins.anthropic import Text, ToolUse
from tests.support import ROOT, wait_for

CLI = "import sys; from jobs.cli import main; sys.exit(main())"


def sessions(service, tmp_path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "QUEUE_"))}
    (tmp_path / "env").mkdir(exist_ok=True)
    env.update(
        PYTHONPATH=str(ROOT),
        REDIS_URL=service.redis_url,
        CLAUDECLUSTER_ENV_DIR=str(tmp_path / "env"),
    )
    return subprocess.run(
        [sys.executable, "-c", CLI, "sessions", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def row(listing: str, session_id: str) -> str:
    found = [line for line in listing.splitlines() if session_id in line]
    return found[0] if found else ""


def cells(line: str) -> list[str]:
    """A table row's cells, as rich draws them between its `│` rules."""
    return [cell.strip() for cell in line.split("│")[1:-1]]


def test_a_running_session_is_listed_stopped_from_the_command_and_shown_ended(service, tmp_path):
    api = service.anthropic
    number = service.new_issue("Stop me from the command line")
    release = threading.Event()
    api.script(
        [
            ToolUse("Bash", {"command": "echo late > late.txt"}, hold=release),
            Text("Wrote late.txt."),
        ]
    )
    branches_before = service.github.branches(REPO)
    answer = service.comment(number, "/claude write late.txt")
    assert answer.status_code == 202
    session_id = answer.json()["session"]
    try:
        wait_for(lambda: api.main_requests(), 120, what="claude to start")
        listed = sessions(service, tmp_path, "ls")
        assert listed.returncode == 0, listed.stderr
        running = cells(row(listed.stdout, session_id))
        assert running[1:6] == ["running", REPO, f"issue #{number}", "octocat", "implement"], (
            listed.stdout
        )

        stopped = sessions(service, tmp_path, "stop", session_id)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert f"Asked session {session_id} to stop, as @octocat" in stopped.stdout
        final = service.wait_final(number, timeout=120)
    finally:
        release.set()
    assert "Stopped by @octocat" in final.body and "Nothing was pushed" in final.body, final.body
    assert not service.pulls_for(number)
    assert service.github.branches(REPO) == branches_before, "nothing was pushed"

    def ended():
        shown = sessions(service, tmp_path, "show", session_id)
        return shown if "finished" in shown.stdout else None

    shown = wait_for(ended, 60, what="the job to be finished")
    listed = sessions(service, tmp_path, "ls")
    ended_row = cells(row(listed.stdout, session_id))
    assert ended_row[1] == "finished" and ended_row[-1] == "stopped", listed.stdout
    assert "Outcome: status" in shown.stdout and "stopped" in shown.stdout, shown.stdout
    again = sessions(service, tmp_path, "stop", session_id)
    assert again.returncode == 1 and "is not running (finished)" in again.stdout
