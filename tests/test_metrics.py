"""Metrics and health on real parts: gunicorn with two workers, a real Redis, forked processes,
the gateway, the GitHub stand-in. The scrape of a running service after real sessions is in
tests/e2e/test_metrics.py."""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from jobs.common.endpoint import readiness, serve_endpoint
from jobs.common.logs import configure_logging, log_ids
from jobs.common.metrics import record_usage
from jobs.common.redact import Redactor
from jobs.common.settings import ConfigError, WorkerSettings
from jobs.gateway.backends import AnthropicApiKey
from jobs.gateway.proxy import ModelGateway
from jobs.github.client import ISSUE_SESSION_PERMISSIONS, RepoSession
from jobs.worker import docker_ping
from tests.e2e.conftest import procfile
from tests.standins.anthropic import AnthropicStandIn
from tests.standins.github import GitHubStandIn
from tests.support import (
    ROOT,
    RedisServer,
    dead_redis,
    delivery_headers,
    free_port,
    issue_comment_payload,
    wait_for,
)

SECRET = "metrics-test-webhook-secret"


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """A scrape as {(sample name, sorted labels): value}."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(scrape: dict, name: str, **labels: str) -> float | None:
    return scrape.get((name, tuple(sorted(labels.items()))))


class Web:
    """The Procfile's web line (gunicorn, gunicorn.conf.py) on a port of its own."""

    def __init__(self, tmp: Path, redis_url: str, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "web.log"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "PROM"))}
        self.proc = subprocess.Popen(
            ["bash", "-c", f"exec {procfile()['web']}"],
            cwd=ROOT,
            env={
                **base,
                "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}",
                "HOST": "127.0.0.1",
                "PORT": str(self.port),
                "GITHUB_WEBHOOK_SECRET": SECRET,
                "REDIS_URL": redis_url,
                **env,
            },
            start_new_session=True,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        wait_for(self._alive, 60, what="gunicorn to answer /livez")

    def _alive(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()
        try:
            return httpx.get(f"{self.url}/livez", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def workers(self) -> set[int]:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        return {int(pid) for pid in children.split()}

    def scrape(self) -> dict:
        resp = httpx.get(f"{self.url}/metrics", timeout=10)
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
        return samples(resp.text)

    def deliver(self, event: str, payload: dict, secret: str = SECRET) -> int:
        body = json.dumps(payload).encode()
        headers = delivery_headers(event, body, secret)
        # A new connection each time, as GitHub's: gunicorn's workers share the accepts.
        return httpx.post(f"{self.url}/webhooks", content=body, headers=headers).status_code

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)


def comment(number: int) -> dict:
    return issue_comment_payload("octo-org/hello-world", number, "/claude fix it", 4242)


def write_stale_counts(directory: Path) -> None:
    """What a previous run of the web left: counts that must not be served again."""
    script = textwrap.dedent(
        """
        from jobs.common.metrics import web_series
        web_series().deliveries.labels("ping", "200").inc(1000)
        """
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, check=True)
    assert list(directory.glob("counter_*.db"))


def test_deliveries_are_summed_over_gunicorns_workers_and_their_restarts(tmp_path, redis_url):
    metrics_dir = tmp_path / "web-metrics"
    metrics_dir.mkdir()
    write_stale_counts(metrics_dir)
    web = Web(tmp_path, redis_url, WEB_CONCURRENCY="2", PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    try:
        wait_for(lambda: len(web.workers()) == 2, 30, what="two gunicorn workers")
        first = web.workers()
        sent = {("ping", "200"): 0, ("issue_comment", "401"): 0, ("issue_comment", "202"): 0}
        number = 1
        for _round in range(2):
            for _ in range(6):
                assert web.deliver("ping", {"zen": "hi", "hook_id": 1}) == 200
                sent["ping", "200"] += 1
            for _ in range(4):
                assert web.deliver("issue_comment", comment(number), secret="wrong") == 401
                sent["issue_comment", "401"] += 1
            for _ in range(3):
                number += 1
                assert web.deliver("issue_comment", comment(number)) == 202
                sent["issue_comment", "202"] += 1
            if _round == 0:
                # Both workers go (gunicorn starts two new ones): what they counted stays.
                for pid in first:
                    os.kill(pid, signal.SIGTERM)
                wait_for(
                    lambda: len(web.workers()) == 2 and not web.workers() & first,
                    60,
                    what="two new gunicorn workers",
                )
        # A made-up event name, unsigned: counted, but under "other", not a label of its own.
        assert web.deliver("x" * 200, {"a": 1}, secret="wrong") == 401

        scrape = web.scrape()
        for (event, status), count in sent.items():
            got = value(scrape, "claudecluster_deliveries_total", event=event, status=status)
            assert got == count, (event, status, got)
        assert value(scrape, "claudecluster_deliveries_total", event="other", status="401") == 1
        assert not any("x" * 50 in str(key) for key in scrape)
        # Counted by workers that are gone and by their successors, and summed.
        writers = {int(path.stem.split("_", 1)[1]) for path in metrics_dir.glob("counter_*.db")}
        assert writers & first and writers - first, (writers, first)
        # The queue's depth is read from Redis: no worker runs, so every session still waits.
        assert value(scrape, "claudecluster_queue_depth") == sent["issue_comment", "202"]
        assert value(scrape, "claudecluster_redis_up") == 1
        # The same totals from whichever worker answers the scrape.
        assert all(web.scrape() == scrape for _ in range(4))
    finally:
        web.stop()


def test_livez_answers_while_redis_is_down_and_readyz_says_it_is(tmp_path):
    redis = RedisServer(tmp_path)
    redis.start()
    web = Web(tmp_path, redis.url, WEB_CONCURRENCY="1")
    try:
        ready = httpx.get(f"{web.url}/readyz", timeout=10)
        assert ready.status_code == 200 and ready.json() == {"status": "ready"}
        redis.kill()
        ready = httpx.get(f"{web.url}/readyz", timeout=10)
        assert ready.status_code == 503
        assert ready.json()["status"] == "not ready" and list(ready.json()["down"]) == ["redis"]
        live = httpx.get(f"{web.url}/livez", timeout=10)
        assert live.status_code == 200 and live.json() == {"status": "alive"}
        health = httpx.get(f"{web.url}/healthz", timeout=10)  # as it was: degraded
        assert health.status_code == 503 and health.json()["redis"] == "unreachable"
        scrape = web.scrape()  # metrics still answer, saying Redis did not
        assert value(scrape, "claudecluster_redis_up") == 0
        assert value(scrape, "claudecluster_queue_depth") is None
        # Deliveries that cannot be queued are refused, and counted as refused.
        assert web.deliver("issue_comment", comment(7)) == 503
        scrape = web.scrape()
        assert value(scrape, "claudecluster_deliveries_total", event="issue_comment", status="503")
    finally:
        web.stop()
        redis.stop()


def test_the_workers_endpoint_names_what_is_down(monkeypatch, redis_url):
    from redis import Redis

    monkeypatch.setenv("DOCKER_HOST", f"unix:///nonexistent/{secrets.token_hex(4)}.sock")
    checks = {"redis": dead_redis().ping, "docker": docker_ping}
    server = serve_endpoint("127.0.0.1", 0, checks)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        ready = httpx.get(f"{url}/readyz", timeout=10)
        assert ready.status_code == 503
        assert set(ready.json()["down"]) == {"redis", "docker"}
        assert httpx.get(f"{url}/livez", timeout=10).status_code == 200
        assert httpx.get(f"{url}/nope", timeout=10).status_code == 404
        metrics = httpx.get(f"{url}/metrics", timeout=10)
        assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/")
        assert samples(metrics.text)  # this process's registry (no multiprocess directory)
        server.checks = {"redis": Redis.from_url(redis_url).ping}
        assert httpx.get(f"{url}/readyz", timeout=10).json() == {"status": "ready"}
    finally:
        server.shutdown()
    assert readiness({}) == (200, {"status": "ready"})


def test_a_taken_metrics_port_is_named():
    server = serve_endpoint("127.0.0.1", 0, {})
    try:
        port = server.server_address[1]
        with pytest.raises(ConfigError, match=f"METRICS_PORT 127.0.0.1:{port}: .*in use"):
            serve_endpoint("127.0.0.1", port, {})
    finally:
        server.shutdown()


def test_horses_share_one_set_of_files_and_a_killed_horse_counts_no_sandbox(tmp_path):
    """The worker's scheme with real forks: each horse continues the counts of the one before;
    one that dies mid-run (os._exit with a sandbox counted) leaves nothing running."""
    script = textwrap.dedent(
        """
        import os, sys
        from jobs.common import metrics
        metrics.prepare("worker", forks_horses=True)
        for n in range(5):
            pid = os.fork()
            if pid == 0:
                metrics.record_session("implement", "done" if n % 2 else "failed", 30.0 * n)
                metrics.series().sandboxes_running.inc()  # killed before its dec
                os._exit(0)
            os.waitpid(pid, 0)
            metrics.horse_ended()
        sys.stdout.buffer.write(metrics.exposition())
        """
    )
    metrics_dir = tmp_path / "worker-metrics"
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, check=True, capture_output=True
    )
    scrape = samples(out.stdout.decode())
    sessions = "claudecluster_sessions_total"
    assert value(scrape, sessions, mode="implement", outcome="done") == 2
    assert value(scrape, sessions, mode="implement", outcome="failed") == 3
    hist = "claudecluster_session_duration_seconds"
    assert value(scrape, f"{hist}_count", mode="implement") == 5
    assert value(scrape, f"{hist}_sum", mode="implement") == 300.0
    assert value(scrape, f"{hist}_bucket", mode="implement", le="60.0") == 3
    assert value(scrape, f"{hist}_bucket", mode="implement", le="14400.0") == 5
    assert value(scrape, "claudecluster_sandboxes_running") == 0
    # Five horses, and files named after the worker alone, not one set per horse.
    identities = {path.stem.rsplit("_", 1)[1] for path in metrics_dir.glob("*.db")}
    worker = min(identities, key=len)
    assert identities == {worker, f"{worker}-horse"} and worker.isdigit()


def test_metrics_prepare_refuses_once_series_exist():
    script = textwrap.dedent(
        """
        from jobs.common import metrics
        metrics.series()
        metrics.prepare("worker")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True)
    assert result.returncode != 0
    assert b"must run before the first series" in result.stderr


def counted(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_the_gateway_reports_its_refusals_and_the_worker_counts_them(tmp_path):
    key = "sk-ant-api03-" + secrets.token_urlsafe(24)
    with (
        AnthropicStandIn(expected_api_key=key) as api,
        ModelGateway(tmp_path / "gw.sock", AnthropicApiKey(api.url, key)) as gateway,
    ):
        transport = httpx.HTTPTransport(uds=str(gateway.socket_path))
        with httpx.Client(transport=transport, base_url="http://sandbox") as sandbox:
            wrong = {"x-api-key": "ccgw-" + secrets.token_urlsafe(32)}
            body = {"model": "claude-sonnet-5-5", "max_tokens": 8, "messages": []}
            assert sandbox.post("/v1/messages", json=body, headers=wrong).status_code == 401
            assert sandbox.post("/v1/messages", json=body, headers=wrong).status_code == 401
            assert sandbox.get("/v1/models").status_code == 403
        usage = gateway.usage.as_dict()
    assert usage["refused"] == {"authentication_error": 2, "permission_error": 1}
    before = counted("claudecluster_gateway_refusals_total", kind="authentication_error")
    tokens = counted("claudecluster_model_tokens_total", kind="cache_read")
    cost = counted("claudecluster_model_cost_usd_total")
    record_usage({**usage, "cache_read_input_tokens": 40, "cost_usd": 0.25})
    after = counted("claudecluster_gateway_refusals_total", kind="authentication_error")
    assert after - before == 2
    assert counted("claudecluster_model_tokens_total", kind="cache_read") - tokens == 40
    assert counted("claudecluster_model_cost_usd_total") - cost == pytest.approx(0.25)


def test_the_rate_limit_gauge_is_githubs_last_remaining(tmp_path):
    repo = "octo-org/limited"
    with GitHubStandIn() as gh:
        gh.add_installation(77, "octo-org")
        gh.add_repo(repo, 77)
        settings = WorkerSettings.parse(
            GITHUB_APP_ID=str(gh.app_id),
            GITHUB_PRIVATE_KEY=gh.private_key_pem,
            GITHUB_API_URL=gh.api_url,
        )
        session = RepoSession(settings, 77, repo, ISSUE_SESSION_PERMISSIONS)
        for _ in range(3):
            session.repository()
        last = [r for r in gh.responses if r.path.endswith("/repos/octo-org/limited")][-1]
    remaining = int(last.headers["X-RateLimit-Remaining"])
    assert remaining < int(last.headers["X-RateLimit-Limit"])
    gauge = "claudecluster_github_rate_limit_remaining"
    assert counted(gauge, installation="77", resource="core") == remaining


def test_json_log_lines_carry_the_ids_and_no_secret(capsys):
    secret = "webhook-" + secrets.token_hex(16)
    token = "ghs_" + secrets.token_hex(18)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging(Redactor(secret), log_format="json")
    log = logging.getLogger("tests.metrics")
    try:
        with log_ids(delivery="d-123"):
            log.info("delivery received with %s", secret)
            with log_ids(session="s-456"):
                log.warning("session started, token %s", token, extra={"note": secret})
                try:
                    raise RuntimeError(f"failed holding {token}")
                except RuntimeError:
                    log.exception("session failed")
        log.info("no ids here")
    finally:
        root.handlers[:], root.level = handlers, level
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["message"].split(",")[0] for line in lines] == [
        "delivery received with [redacted]",
        "session started",
        "session failed",
        "no ids here",
    ]
    assert [(line.get("delivery_id"), line.get("session_id")) for line in lines] == [
        ("d-123", None),
        ("d-123", "s-456"),
        ("d-123", "s-456"),
        (None, None),
    ]
    assert {line["level"] for line in lines} == {"INFO", "WARNING", "ERROR"}
    assert all(line["logger"] == "tests.metrics" and line["time"] for line in lines)
    assert "RuntimeError" in lines[2]["exc_info"]
    assert lines[1]["note"] == "[redacted]"
    text = json.dumps(lines)
    assert secret not in text and token not in text


def test_a_bad_log_format_is_named(monkeypatch):
    monkeypatch.setenv("LOG_FORMAT", "xml")
    with pytest.raises(ConfigError, match="LOG_FORMAT"):
        WorkerSettings.parse()


def test_the_webs_log_is_json_lines_gunicorns_own_too(tmp_path, redis_url):
    web = Web(tmp_path, redis_url, WEB_CONCURRENCY="1", LOG_FORMAT="json")
    try:
        assert web.deliver("issue_comment", comment(3)) == 202
        wait_for(lambda: "queued " in web.log.read_text(), 30, what="the queued line")
    finally:
        web.stop()
    text = web.log.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert any(line["logger"] == "gunicorn.error" for line in lines)
    (queued,) = [line for line in lines if line["message"].startswith("queued ")]
    assert queued["delivery_id"] and queued["session_id"] in queued["message"]
    assert SECRET not in text
