"""`claudecluster sessions` on the whole service: a session started by a `/claude` comment is
listed while it runs, stopped from the command as `/claude stop` would, and shown as it ended.
"""

from __future__ import annotations

import subprocess
import threading

from tests.cli_support import cli_env, run_cli
from tests.e2e.conftest import REPO
from tests.standins.anthropic import Text, ToolUse
from tests.support import wait_for


def sessions(service, tmp_path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(cli_env(tmp_path, REDIS_URL=service.redis_url), "sessions", *args, timeout=60)


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
