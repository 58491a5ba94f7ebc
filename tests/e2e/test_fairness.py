"""Fair sharing with the real service: one installation's burst waits at its limit, says so on
each waiting request's thread, and another installation's single request starts at the next
free worker instead of behind the burst; every session ends in a final state."""

from __future__ import annotations

import contextlib
import json
import threading

import pytest
from redis import Redis
from rq import Worker
from rq.job import Job
from rq.serializers import JSONSerializer

from tests.e2e.conftest import (
    ANY_STATE,
    REPO,
    SESSION_PERMISSIONS,
    StandIns,
    end_workers,
    more_workers,
    run_service,
)
from tests.standins.anthropic import Text, ToolUse
from tests.support import issue_comment_payload, wait_for, wait_for_count

LIMIT, BURST, WORKERS = 2, 8, 3
# Its own installation: the fix-ci tests on the same stand-in take 4343.
OTHER_INSTALLATION, OTHER_REPO = 4646, "fair-org/app"


@pytest.fixture(scope="module")
def fair(stand_ins: StandIns, tmp_path_factory):
    gh = stand_ins.github
    with contextlib.suppress(ValueError):  # the session's stand-in: added once
        gh.add_installation(OTHER_INSTALLATION, "fair-org", permissions=SESSION_PERMISSIONS)
        gh.add_repo(OTHER_REPO, OTHER_INSTALLATION, files={"README.md": "# app\n"})
        gh.add_collaborator(OTHER_REPO, "octocat", "write")
    with run_service(
        "fairness",
        13,
        stand_ins,
        tmp_path_factory,
        MAX_SESSIONS_PER_INSTALLATION=str(LIMIT),
    ) as svc:
        yield svc


def comment_as_other(svc, number: int, body: str):
    """What `Service.comment` does, on the other installation's repository."""
    gh = svc.github
    seeded = gh.add_comment(OTHER_REPO, number, body, "octocat")
    payload = issue_comment_payload(
        OTHER_REPO, number, body, OTHER_INSTALLATION, user_id=seeded.user.id
    )
    payload["comment"]["id"] = seeded.id
    stamp = seeded.created_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    payload["comment"]["created_at"] = payload["comment"]["updated_at"] = stamp
    return svc.deliver(payload)


def states(svc, number: int, repo: str = REPO) -> list[str]:
    return [ANY_STATE.search(c.body).group(0) for c in svc.tracking_comments(number, repo)]


def test_a_burst_waits_at_its_limit_and_another_installation_goes_first(fair, tmp_path):
    svc, gh, api = fair, fair.github, fair.anthropic
    redis = Redis.from_url(svc.redis_url)
    # Three workers, one more than the limit: the burst's waiting sessions are waiting for
    # their installation's slot, not for a worker, and the third worker's look finds them so.
    extra = more_workers(svc, WORKERS - 1, tmp_path)
    go = threading.Event()

    def started(session_id: str):
        return Job.fetch(session_id, connection=redis, serializer=JSONSerializer).started_at

    try:
        wait_for_count(
            lambda: len(Worker.all(connection=redis)), WORKERS, stall=120, what="workers"
        )
        # Every session is held in its first turn until `go`: the burst's first two run on.
        api.script_each_conversation(
            [ToolUse("Bash", {"command": "echo done > done.md"}, hold=go), Text("Done.")]
        )
        numbers = [svc.new_issue(f"Burst task {i}") for i in range(BURST)]
        sessions = []
        for number in numbers:
            answer = svc.comment(number, "/claude write done.md")
            assert answer.status_code == 202, answer.text
            sessions.append(answer.json()["session"])

        def settled():
            found = [states(svc, n) for n in numbers]
            working = sum("state=working" in s[0] for s in found if s)
            waiting = sum("state=queued" in s[0] for s in found if s)
            return (working, waiting) == (LIMIT, BURST - LIMIT)

        wait_for(settled, 300, interval=1, what="two running and six queued comments")
        queued = [c for n in numbers for c in svc.tracking_comments(n) if "state=queued" in c.body]
        for comment in queued:
            assert "⏳ **Queued**" in comment.body
            assert f"{LIMIT} sessions of this installation are running" in comment.body
            assert f"its limit is {LIMIT}" in comment.body

        other = 100
        gh.add_issue(OTHER_REPO, other, "A single task", "Please.", "octocat", 583231)
        answer = comment_as_other(svc, other, "/claude write done.md")
        assert answer.status_code == 202, answer.text
        single = answer.json()["session"]
        single_at = wait_for(lambda: started(single), 300, what="the other installation's start")
        wait_for(lambda: "state=working" in "".join(states(svc, other, OTHER_REPO)), 120)

        # Asked while it waits (every worker is busy now): the last of the burst is taken
        # before the rest of the burst once a worker is free, and stops before it runs.
        last = numbers[-1]
        assert svc.comment(last, "/claude stop").json()["status"] == "stopping"
        go.set()
        finals = {n: svc.wait_final(n, timeout=600) for n in numbers}
        other_final = svc.wait_final(other, timeout=300, repo=OTHER_REPO)
    finally:
        go.set()
        end_workers(extra)

    # Within one session slot: of the burst's waiting sessions, at most one started between
    # the other's arrival and its start (here none: the burst was at its limit).
    waited = [s for s in sessions[LIMIT:] if (at := started(s)) is not None and at < single_at]
    assert len(waited) <= 1, waited
    assert "state=done" in other_final.body
    for number in numbers[:-1]:
        assert "state=done" in finals[number].body, finals[number].body
    assert "Stopped by @octocat" in finals[last].body
    # It stopped before its agent ran: the model never heard of it.
    asked = [json.dumps(r.body) for r in api.main_requests()]
    assert any("Burst task 0" in a for a in asked)  # the titles are in what the model reads
    assert not any(f"Burst task {BURST - 1}" in a for a in asked)
    # Each waiting session's queued comment became its tracking comment: one per thread.
    for number in numbers:
        assert len(svc.tracking_comments(number)) == 1, states(svc, number)


def test_a_request_left_waiting_for_the_busy_worker_is_told_so(service):
    """The shared service runs one worker: a second request waits while the first one runs,
    and hears within seconds that it is queued and why, on the comment its session then takes."""
    svc, api = service, service.anthropic
    release = threading.Event()
    api.reset()
    api.script(
        [
            ToolUse("Bash", {"command": "true"}, hold=release),
            Text("First one done."),
            Text("Second one done."),
        ]
    )
    first, second = svc.new_issue("Hold the worker"), svc.new_issue("Wait for it")
    try:
        assert svc.comment(first, "/claude hold on").status_code == 202
        wait_for(api.main_requests, 120, what="the first session mid-turn")
        assert svc.comment(second, "/claude then this").status_code == 202

        def queued() -> list:
            return [c for c in svc.tracking_comments(second) if "state=queued" in c.body]

        (told,) = wait_for(queued, 120, what="the second request's queued comment")
    finally:
        release.set()
    assert "the one worker is busy with other sessions, and 0 requests are ahead" in told.body
    for number in (first, second):
        assert "state=done" in svc.wait_final(number).body
    (only,) = svc.tracking_comments(second)  # the session took its queued comment over
    assert only.id == told.id
