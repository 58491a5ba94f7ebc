"""A scrape of the running service after real sessions: the web's /metrics (two gunicorn workers)
and the worker's METRICS_PORT (each session in a forked horse), with JSON logs on."""

from __future__ import annotations

import json
from collections import Counter

import httpx
import pytest
from redis import Redis
from rq.job import Job
from rq.serializers import JSONSerializer

from tests.e2e.conftest import INSTALLATION, MODEL_KEY, SECRET, run_service
from tests.standins.anthropic import Text, ToolUse
from tests.support import free_port, wait_for
from tests.test_metrics import samples, value

# From inside the sandbox, a request the gateway must refuse: it serves only the Messages API.
REFUSED = (
    "exec 3<>/dev/tcp/127.0.0.1/8787; "
    "printf 'GET /v1/models HTTP/1.1\\r\\nHost: gateway\\r\\nConnection: close\\r\\n\\r\\n' >&3; "
    "head -1 <&3; exec 3<&-"
)


@pytest.fixture(scope="module")
def observed(stand_ins, tmp_path_factory):
    port = free_port()
    with run_service(
        "metrics", 7, stand_ins, tmp_path_factory, METRICS_PORT=str(port), LOG_FORMAT="json"
    ) as svc:
        svc.worker_metrics = f"http://127.0.0.1:{port}"
        yield svc


def scrape(url: str) -> dict:
    resp = httpx.get(f"{url}/metrics", timeout=10)
    assert resp.status_code == 200, resp.text
    return samples(resp.text)


def finished(svc, session: str) -> dict:
    redis = Redis.from_url(svc.redis_url)

    def result():
        job = Job.fetch(session, connection=redis, serializer=JSONSerializer)
        return job.return_value() if job.is_finished else None

    return wait_for(result, 240, what=f"session {session} to finish")


def test_a_scrape_after_sessions_counts_each_series(observed):
    svc, api, gh = observed, observed.anthropic, observed.github
    sessions = {}

    write = ToolUse("Write", {"file_path": "/workspace/NOTES.md", "content": "notes\n"})
    api.script([write, Text("Done.")])
    answer = svc.comment(svc.new_issue("Add notes"), "/claude add a NOTES.md")
    assert answer.status_code == 202, answer.text
    sessions["implement"] = answer.json()["session"]
    assert finished(svc, sessions["implement"])["status"] == "pull_request"

    api.script([ToolUse("Bash", {"command": REFUSED}), Text("The gateway said no.")])
    answer = svc.comment(svc.new_issue("Probe the gateway"), "/claude list the models")
    sessions["refused"] = answer.json()["session"]
    assert finished(svc, sessions["refused"])["status"] == "no_changes"

    api.script([Text("Nothing to change.")])
    answer = svc.comment(svc.new_issue("A question"), "/claude is this fine?")
    sessions["answer"] = answer.json()["session"]
    assert finished(svc, sessions["answer"])["status"] == "no_changes"

    answer = svc.comment(svc.new_issue("Help"), "/claude help")
    sessions["help"] = answer.json()["session"]
    assert finished(svc, sessions["help"])["status"] == "help"

    forged = svc.deliver({"zen": "forged"}, event="issue_comment", secret="not-the-secret")
    assert forged.status_code == 401

    results = {name: finished(svc, sid) for name, sid in sessions.items()}
    worker = scrape(svc.worker_metrics)

    # Sessions by mode and outcome, as the jobs themselves ended, each in its own horse.
    outcomes = Counter(
        ("help" if name == "help" else "implement", result["status"])
        for name, result in results.items()
    )
    for (mode, outcome), count in outcomes.items():
        got = value(worker, "claudecluster_sessions_total", mode=mode, outcome=outcome)
        assert got == count, (mode, outcome, got, svc.tail("worker"))
    total = sum(v for (name, _), v in worker.items() if name == "claudecluster_sessions_total")
    assert total == len(sessions)
    duration = "claudecluster_session_duration_seconds"
    assert value(worker, f"{duration}_count", mode="implement") == len(sessions) - 1
    assert value(worker, f"{duration}_count", mode="help") == 1
    assert value(worker, f"{duration}_bucket", mode="implement", le="14400.0") == len(sessions) - 1
    assert value(worker, "claudecluster_queue_wait_seconds_count") == len(sessions)
    assert value(worker, "claudecluster_queue_wait_seconds_sum") > 0

    # Cost and tokens: what the gateway counted, which is what the model API reported.
    reported = Counter()
    for request in api.requests:
        reported.update(request.usage or {})
    kinds = {
        "input": "input_tokens",
        "output": "output_tokens",
        "cache_write": "cache_creation_input_tokens",
        "cache_read": "cache_read_input_tokens",
    }
    for kind, field in kinds.items():
        got = value(worker, "claudecluster_model_tokens_total", kind=kind) or 0
        assert got == reported[field], (kind, got, reported)
    assert reported["input_tokens"] > 0 and reported["output_tokens"] > 0
    cost = sum(r.get("cost_usd") or 0 for r in results.values())
    assert cost > 0
    assert value(worker, "claudecluster_model_cost_usd_total") == pytest.approx(cost, rel=1e-6)

    # Refusals, reported by the gateway when each session's gateway closed: as many as the
    # gateway process logged, the sandbox's GET among them.
    refused = [
        json.loads(line)["message"]
        for line in svc.logs["gateway"].read_text().splitlines()
        if '"gateway: refused ' in line
    ]
    assert any(line.startswith("gateway: refused GET /v1/models: 403") for line in refused)
    refusals = "claudecluster_gateway_refusals_total"
    assert value(worker, refusals, kind="permission_error") == sum(": 403 " in r for r in refused)
    assert sum(v for (name, _), v in worker.items() if name == refusals) == len(refused)
    assert value(worker, "claudecluster_sandboxes_running") == 0

    # GitHub's rate limit as the worker last saw it, from the stand-in's own headers.
    remaining = value(
        worker,
        "claudecluster_github_rate_limit_remaining",
        installation=str(INSTALLATION),
        resource="core",
    )
    sent = {
        int(r.headers["X-RateLimit-Remaining"])
        for r in gh.responses
        if "X-RateLimit-Remaining" in r.headers
    }
    assert remaining in sent and remaining < 5000

    # The web: deliveries by event and answer, summed over its two workers; the queue is empty.
    web = scrape(svc.url)
    queued = value(web, "claudecluster_deliveries_total", event="issue_comment", status="202")
    assert queued == len(sessions)
    assert value(web, "claudecluster_deliveries_total", event="issue_comment", status="401") == 1
    wait_for(lambda: value(scrape(svc.url), "claudecluster_queue_depth") == 0, 60, what="depth 0")
    # Each role serves its own series only: a sum over both counts nothing twice.
    web_names, worker_names = {name for name, _ in web}, {name for name, _ in worker}
    assert not {n for n in web_names if n.startswith("claudecluster_")} & worker_names
    assert "claudecluster_sessions_total" not in web_names

    # Health: the web's and the worker's, all up.
    for url in (svc.url, svc.worker_metrics):
        assert httpx.get(f"{url}/livez", timeout=10).status_code == 200
        ready = httpx.get(f"{url}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text

    # JSON logs: every line of the web's (gunicorn's own too) and the worker's is an object,
    # with the delivery and session ids where known, and no secret.
    lines = {}
    for role in ("web", "worker"):
        text = svc.logs[role].read_text()
        lines[role] = [json.loads(line) for line in text.splitlines() if line.strip()]
        assert all({"time", "level", "logger", "message"} <= set(line) for line in lines[role])
        for secret in (MODEL_KEY, SECRET, gh.private_key_pem.splitlines()[1]):
            assert secret not in text
        # A mint refused, or still being answered, holds no token (None) to look for.
        for token in [mint.token for mint in gh.token_requests if mint.token]:
            assert token not in text
    assert any(line["logger"].startswith("gunicorn") for line in lines["web"])
    queued = [line for line in lines["web"] if line["message"].startswith("queued ")]
    delivered = {line["session_id"]: line["delivery_id"] for line in queued}
    assert set(delivered) == set(sessions.values()) and all(delivered.values())
    for session in sessions.values():
        own = [line for line in lines["worker"] if line.get("session_id") == session]
        assert {line["delivery_id"] for line in own} == {delivered[session]}
        assert any(line["message"].startswith(f"session {session} ended: ") for line in own)
