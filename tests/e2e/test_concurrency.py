"""Eight sessions at once on this 2-core machine: each ends correctly, none steps on another."""

from __future__ import annotations

import threading

from redis import Redis
from rq import Worker

from tests.e2e.conftest import REPO, end_workers, leftover_containers, more_workers
from tests.standins.anthropic import Text, ToolUse
from tests.support import wait_for, wait_for_count

SESSIONS = 8


def test_eight_sessions_run_at_once_and_all_complete(service, tmp_path):
    gh, api = service.github, service.anthropic
    redis = Redis.from_url(service.redis_url)
    # The service runs one worker; seven more make eight sessions run side by side.
    extra = more_workers(service, SESSIONS - 1, tmp_path)
    # Another run on the same engine may have left sandboxes of its own: count only this test's.
    foreign = {c.id for c in leftover_containers()}

    def ours() -> list:
        return [c for c in leftover_containers() if c.id not in foreign]

    try:
        # Every session gets the same two turns: write a file named after its sandbox (the
        # hostname is the container's id), then answer.
        # All eight workers listening before the first request: their start is no session's.
        wait_for_count(
            lambda: len(Worker.all(connection=redis)), SESSIONS, stall=120, what="workers up"
        )
        numbers = [service.new_issue(f"Parallel task {i}") for i in range(SESSIONS)]
        write = 'echo done > "task-$(hostname).md"'
        # Each sandbox's first answer is held until all eight run: together by construction,
        # however long a busy machine takes to start them.
        together = threading.Event()
        api.script_each_conversation(
            [ToolUse("Bash", {"command": write}, hold=together), Text("Wrote my task file.")]
        )
        for number in numbers:
            assert service.comment(number, "/claude write your task file").status_code == 202
        try:
            # Eight workers and eight containers starting on two busy cores take their time:
            # what fails is no new sandbox for minutes, not a slow start.
            wait_for_count(
                lambda: len(ours()), SESSIONS, stall=240, what="sandboxes running together"
            )
        finally:
            together.set()
        finals = [service.wait_final(number, timeout=300) for number in numbers]
        unfinished = [f.body for f in finals if "state=done" not in f.body]
        assert not unfinished, unfinished
        files = []
        for number in numbers:
            (pull,) = service.pulls_for(number)
            files += gh.git(REPO, "diff", "--name-only", "main", pull.head_ref).split()
        # One file per session, each from a different sandbox: nobody wrote into another's tree.
        assert len(files) == len(set(files)) == SESSIONS
        wait_for(lambda: not ours(), 60, what="every sandbox removed")
    finally:
        end_workers(extra)
