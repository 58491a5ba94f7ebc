"""The failed-delivery sweeper against a real Redis, the real front door and the GitHub stand-in.

The front door (`create_service`) is served over real HTTP and reaches Redis through a gate that a
test can shut, so "Redis down" is a refused connection, as in an outage. The stand-in POSTs
deliveries to the front door, logs the outcome like GitHub, and redelivers on request with the
same `X-GitHub-Delivery`. The sweeper talks to the stand-in with the App's JWT and to the real
Redis directly (it runs in the worker, which has Redis or does not run at all).

Every response the stand-in sent is validated against GitHub's OpenAPI description (GHES 3.19
and api.github.com) when each test ends.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from datetime import timedelta

import pytest
from githubkit import AppAuthStrategy, GitHub, TokenAuthStrategy
from githubkit.cache import MemCacheStrategy
from githubkit.exception import RequestFailed
from redis import Redis
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

from app import create_service
from jobs.common.queue import session_queue
from jobs.common.settings import WebSettings, WorkerSettings
from jobs.upkeep import redelivery
from jobs.upkeep.redelivery import (
    SWEEP_JOB,
    backoff,
    claim_key,
    in_flight_key,
    schedule_sweep,
    sweep,
    sweep_job_id,
    window_for,
)
from tests.standins import openapi
from tests.standins.github import GitHubStandIn
from tests.standins.github_hooks import HOOK_ROUTES
from tests.standins.github_objects import now
from tests.support import free_port, issue_comment_payload, serving, webhook_example

SECRET = "It's a Secret to Everybody"
REPO = "octo-org/hello-world"
INSTALLATION = 42
DAY = timedelta(days=1)


# --------------------------------------------------------------------------- a Redis that goes down


class RedisGate:
    """A TCP relay in front of the test Redis. `close()` refuses new connections and drops the
    open ones (Redis is down); `open()` listens again on the same port (Redis is back)."""

    def __init__(self, target: str):
        host_port = target.split("://", 1)[1].split("/", 1)[0]
        host, port = host_port.rsplit(":", 1)
        self._target = (host, int(port))
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.open()

    def open(self) -> None:
        if self._listener is not None:
            return
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.05)
        self._listener = listener
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, args=(listener, self._stop))
        self._thread.daemon = True
        self._thread.start()

    def close(self) -> None:
        if self._listener is None:
            return
        self._stop.set()
        assert self._thread is not None
        self._thread.join(5)
        self._listener.close()
        self._listener = None
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def _accept(self, listener: socket.socket, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                upstream = socket.create_connection(self._target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def openapi_specs():
    try:
        for spec in openapi.SPECS:
            openapi.load_spec(spec)
    except openapi.OpenAPISpecMissing as exc:
        pytest.fail(str(exc))
    return openapi.SPECS


@pytest.fixture
def gate(redis_url):
    relay = RedisGate(redis_url)
    yield relay
    relay.close()


@pytest.fixture
def service(gate):
    """The real front door over HTTP, its Redis behind the gate; yields the webhook URL."""
    app = create_service(WebSettings.parse(GITHUB_WEBHOOK_SECRET=SECRET, REDIS_URL=gate.url))
    with serving(app) as url:
        yield f"{url}/webhooks"


@pytest.fixture
def github(service, openapi_specs):
    with GitHubStandIn() as standin:
        standin.add_installation(INSTALLATION, "octo-org")
        standin.set_webhook(service, SECRET)
        yield standin
        standin.settle()
        assert standin.errors == [], "stand-in raised:\n" + "\n".join(standin.errors)
        validate_responses(standin, openapi_specs)


@pytest.fixture
def redis(redis_url):
    return Redis.from_url(redis_url)


def validate_responses(standin: GitHubStandIn, specs) -> None:
    failures = []
    for resp in standin.responses:
        for spec in specs:
            try:
                openapi.validate_response(
                    resp.method, resp.template, resp.status, resp.body, spec=spec
                )
            except openapi.OpenAPIValidationError as exc:
                failures.append(str(exc))
    assert not failures, "responses not matching GitHub's OpenAPI description:\n" + "\n".join(
        failures
    )


def settings_for(standin: GitHubStandIn, redis_url: str):
    return WorkerSettings.parse(
        GITHUB_APP_ID=standin.app_id,
        GITHUB_PRIVATE_KEY=standin.private_key_pem,
        GITHUB_API_URL=standin.api_url,
        REDIS_URL=redis_url,
    )


class Pauses(list):
    """The injected pacing: records each pause instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def trigger(number: int = 7) -> dict:
    return issue_comment_payload(REPO, number, "/claude fix the crash", INSTALLATION)


def queued(redis_url: str) -> list[str]:
    return Queue(
        "sessions", connection=Redis.from_url(redis_url), serializer=JSONSerializer
    ).job_ids


def redeliveries(standin: GitHubStandIn) -> list[int]:
    """Delivery ids the sweeper asked to redeliver (every POST …/attempts the stand-in saw)."""
    return [
        int(r.path.rsplit("/", 2)[-2])
        for r in standin.requests
        if r.method == "POST" and r.path.endswith("/attempts")
    ]


def list_requests(standin: GitHubStandIn) -> list[str]:
    return [r.query for r in standin.requests if r.path.endswith("/app/hook/deliveries")]


# --------------------------------------------------------------------------- the outage, end to end


def test_outage_then_sweep_queues_exactly_one_session(github, gate, redis, redis_url):
    gate.close()
    lost = github.deliver("issue_comment", trigger())
    assert (lost.status_code, lost.status) == (503, "Invalid HTTP Response: 503")
    assert lost.response_body is not None and "queue unavailable" in lost.response_body
    assert lost.request_headers["X-Hub-Signature-256"].startswith("sha256=")
    assert not redis.exists(claim_key(lost.guid))
    assert queued(redis_url) == []

    gate.open()
    pauses = Pauses()
    report = sweep(settings_for(github, redis_url), redis, pause=pauses)
    assert report.skipped is None and report.errors == []
    assert report.redelivered == [lost.guid]
    assert (report.events, report.failed, report.pages) == (1, 1, 1)
    assert redeliveries(github) == [lost.id]
    assert pauses == []  # one request: nothing to pace

    github.settle()
    tries = github.deliveries_of(lost.guid)
    assert [(t.redelivery, t.status_code, t.status) for t in tries] == [
        (False, 503, "Invalid HTTP Response: 503"),
        (True, 202, "OK"),
    ]
    assert tries[1].request_headers["X-GitHub-Delivery"] == lost.guid
    assert tries[1].body == lost.body
    assert queued(redis_url) == [f"session-{lost.guid}"]
    assert redis.get(claim_key(lost.guid)) == f"session-{lost.guid}".encode()

    again = sweep(settings_for(github, redis_url), redis, pause=pauses)
    assert (again.failed, again.redelivered) == (0, [])
    assert redeliveries(github) == [lost.id]
    assert queued(redis_url) == [f"session-{lost.guid}"]


def test_successful_and_accepted_deliveries_are_never_redelivered(github, redis, redis_url):
    queued_one = github.deliver("issue_comment", trigger())
    ignored = github.deliver("issues", webhook_example("issues", "opened"))
    pong = github.deliver("ping", {"zen": "Keep it logically awesome.", "hook_id": 1})
    assert [queued_one.status_code, ignored.status_code, pong.status_code] == [202, 200, 200]
    # GitHub gave up after its timeout, but the front door had queued the session by then.
    late = github.record_delivery(
        "issue_comment", trigger(8), status_code=0, status="timed out", delivered_at=now()
    )
    redis.set(claim_key(late.guid), f"session-{late.guid}")

    report = sweep(settings_for(github, redis_url), redis, pause=Pauses())
    assert (report.events, report.failed, report.accepted) == (4, 1, 1)
    assert report.redelivered == []
    assert redeliveries(github) == []
    assert queued(redis_url) == [f"session-{queued_one.guid}"]


def test_a_guid_that_failed_several_times_is_redelivered_once(github, redis, redis_url):
    t = now()
    original = github.record_delivery(
        "issue_comment", trigger(), status_code=503, delivered_at=t - timedelta(hours=3)
    )
    guid = original.guid
    for age, code in ((timedelta(hours=2), 503), (timedelta(minutes=90), 0)):
        github.record_delivery(
            "issue_comment",
            trigger(),
            status_code=code,
            guid=guid,
            redelivery=True,
            delivered_at=t - age,
        )
    last = github.deliveries_of(guid)[-1]
    # Another event whose redelivery failed five minutes ago waits (back-off after a failure).
    recent = github.record_delivery(
        "issue_comment", trigger(9), status_code=503, delivered_at=t - timedelta(minutes=30)
    )
    github.record_delivery(
        "issue_comment",
        trigger(9),
        status_code=503,
        guid=recent.guid,
        redelivery=True,
        delivered_at=t - timedelta(minutes=5),
    )

    report = sweep(settings_for(github, redis_url), redis, pause=Pauses())
    assert (report.events, report.failed, report.backing_off) == (2, 2, 1)
    assert report.redelivered == [guid]
    assert redeliveries(github) == [last.id]  # one request, for the latest attempt

    github.settle()
    assert [d.status_code for d in github.deliveries_of(guid)] == [503, 503, 0, 202]
    assert queued(redis_url) == [f"session-{guid}"]
    again = sweep(settings_for(github, redis_url), redis, pause=Pauses())
    assert again.redelivered == []
    assert redeliveries(github) == [last.id]


def test_two_sweeps_in_a_row_do_not_redeliver_twice(github, gate, redis, redis_url):
    settings = settings_for(github, redis_url)
    gate.close()
    lost = github.deliver("issue_comment", trigger())
    gate.open()

    # GitHub accepted the redelivery but has not sent it yet: the next sweep leaves it alone.
    github.hold_redeliveries()
    first = sweep(settings, redis, pause=Pauses())
    second = sweep(settings, redis, pause=Pauses())
    assert first.redelivered == [lost.guid]
    assert (second.redelivered, second.in_flight) == ([], 1)
    github.release_redeliveries()
    github.settle()
    assert [d.status_code for d in github.deliveries_of(lost.guid)] == [503, 202]
    assert queued(redis_url) == [f"session-{lost.guid}"]
    assert len(redeliveries(github)) == 1


def test_a_redelivery_that_fails_again_is_not_repeated_at_once(github, gate, redis, redis_url):
    """The web process is the broken part (its Redis unreachable, the worker's fine)."""
    settings = settings_for(github, redis_url)
    gate.close()
    lost = github.deliver("issue_comment", trigger())
    first = sweep(settings, redis, pause=Pauses())
    github.settle()
    assert first.redelivered == [lost.guid]
    assert [d.status_code for d in github.deliveries_of(lost.guid)] == [503, 503]

    second = sweep(settings, redis, pause=Pauses())
    assert (second.redelivered, second.backing_off) == ([], 1)  # failed 0 s ago: back off
    assert redis.exists(in_flight_key(lost.guid))
    assert len(redeliveries(github)) == 1

    # Eleven minutes on: the marker has expired and the first back-off (10 min) is over.
    github.deliveries_of(lost.guid)[-1].delivered_at -= timedelta(minutes=11)
    redis.delete(in_flight_key(lost.guid))
    third = sweep(settings, redis, pause=Pauses())
    assert third.redelivered == [lost.guid]
    github.settle()
    redis.delete(in_flight_key(lost.guid))
    github.deliveries_of(lost.guid)[-1].delivered_at -= timedelta(minutes=11)
    fourth = sweep(settings, redis, pause=Pauses())
    assert (fourth.redelivered, fourth.backing_off) == ([], 1)  # the second wait is 20 min
    assert len(redeliveries(github)) == 2
    assert backoff(1) == timedelta(minutes=10) and backoff(3) == timedelta(minutes=40)
    assert backoff(20) == timedelta(hours=12)


def test_concurrent_sweeps_ask_once(github, gate, redis, redis_url):
    settings = settings_for(github, redis_url)
    gate.close()
    lost = [github.deliver("issue_comment", trigger(n)) for n in (1, 2, 3)]
    gate.open()
    reports = []
    barrier = threading.Barrier(3)

    def run():
        barrier.wait()
        reports.append(sweep(settings, Redis.from_url(redis_url), pause=Pauses()))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    asked = sorted(guid for report in reports for guid in report.redelivered)
    assert asked == sorted(d.guid for d in lost)
    assert len(redeliveries(github)) == 3
    github.settle()
    assert sorted(queued(redis_url)) == sorted(f"session-{d.guid}" for d in lost)


# --------------------------------------------------------------------------- window and paging


def test_deliveries_older_than_the_window_are_ignored(github, redis, redis_url):
    t = now()
    old = [
        github.record_delivery(
            "issue_comment", trigger(n), status_code=503, delivered_at=t - 4 * DAY - n * DAY / 10
        )
        for n in range(4)
    ]
    fresh = github.record_delivery(
        "issue_comment", trigger(20), status_code=503, delivered_at=t - 2 * DAY
    )
    report = sweep(settings_for(github, redis_url), redis, since=3 * DAY, per_page=1)
    assert report.redelivered == [fresh.guid]
    assert (report.scanned, report.events) == (1, 1)
    # Newest first: the first delivery past the window ends the listing (5 pages exist).
    assert report.pages == 2
    assert len(list_requests(github)) == 2
    assert redeliveries(github) == [fresh.id]
    assert all(not github.deliveries_of(d.guid)[-1].redelivery for d in old)


def test_pagination_over_several_pages_oldest_first_paced_and_bounded(github, redis, redis_url):
    settings = settings_for(github, redis_url)
    t = now()
    lost = [
        github.record_delivery(
            "issue_comment", trigger(n), status_code=503, delivered_at=t - timedelta(hours=10 - n)
        )
        for n in range(7)
    ]
    pauses = Pauses()
    report = sweep(settings, redis, per_page=3, budget=4, pause=pauses)
    assert report.pages == 3
    assert (report.scanned, report.failed, report.deferred) == (7, 7, 3)
    assert report.redelivered == [d.guid for d in lost[:4]]  # oldest first
    assert pauses == [1.0, 1.0, 1.0]  # ≥ 1 s between two requests
    queries = list_requests(github)
    assert queries[0] == "per_page=3"
    assert [q.split("cursor=")[1] for q in queries[1:]] == [f"v1_{lost[3].id}", f"v1_{lost[0].id}"]

    github.settle()
    rest = sweep(settings, redis, per_page=3, budget=4, pause=pauses)
    assert rest.redelivered == [d.guid for d in lost[4:]]
    github.settle()
    assert sorted(queued(redis_url)) == sorted(f"session-{d.guid}" for d in lost)
    assert len(redeliveries(github)) == 7


# --------------------------------------------------------------------------- health, GitHub errors


def test_no_sweep_without_redis(github, redis_url):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    github.record_delivery("issue_comment", trigger(), status_code=503)
    report = sweep(settings_for(github, dead), Redis.from_url(dead, socket_connect_timeout=1))
    assert report.skipped is not None and report.skipped.startswith("redis unreachable")
    assert github.requests == []


def test_github_errors_stop_or_skip_without_losing_the_event(github, redis, redis_url):
    settings = settings_for(github, redis_url)
    t = now()
    a = github.record_delivery(
        "issue_comment", trigger(1), status_code=503, delivered_at=t - timedelta(hours=2)
    )
    b = github.record_delivery(
        "issue_comment", trigger(2), status_code=503, delivered_at=t - timedelta(hours=1)
    )

    github.fail_next("GET", r"/app/hook/deliveries$", 400)
    listing = sweep(settings, redis, pause=Pauses())
    assert listing.errors == ["listing deliveries failed: HTTP 400"]
    assert redeliveries(github) == []

    # A 403 (no rate-limit headers: GitHub refusing us) ends the sweep and forgets the request.
    github.fail_next("POST", r"/attempts$", 403)
    refused = sweep(settings, redis, pause=Pauses())
    assert refused.redelivered == []
    assert refused.errors == [f"redelivery of {a.guid} refused: HTTP 403"]
    assert not redis.exists(in_flight_key(a.guid))
    assert len(redeliveries(github)) == 1

    retried = sweep(settings, redis, pause=Pauses())
    assert retried.redelivered == [a.guid, b.guid]
    github.settle()
    assert sorted(queued(redis_url)) == sorted([f"session-{a.guid}", f"session-{b.guid}"])


def test_github_refusing_an_old_delivery_is_not_asked_again(github, redis, redis_url):
    settings = settings_for(github, redis_url)
    github.hook_retention = 3 * DAY  # github.com's window, while the sweep looks back 7 days
    old = github.record_delivery(
        "issue_comment", trigger(), status_code=503, delivered_at=now() - 4 * DAY
    )
    first = sweep(settings, redis, since=7 * DAY, pause=Pauses())
    assert first.redelivered == []
    assert first.errors == [f"redelivery of {old.guid} refused: HTTP 422"]
    assert redis.exists(in_flight_key(old.guid))  # a refusal is remembered
    second = sweep(settings, redis, since=7 * DAY, pause=Pauses())
    assert (second.in_flight, second.errors) == (1, [])
    assert len(redeliveries(github)) == 1
    assert window_for(settings) == 7 * DAY  # the stand-in is GitHub Enterprise Server
    dotcom = WorkerSettings.parse(GITHUB_API_URL="https://api.github.com")
    assert window_for(dotcom) == 3 * DAY


# --------------------------------------------------------------------------- the stand-in


def test_standin_delivery_endpoints_like_github(github, redis_url):
    app = GitHub(
        AppAuthStrategy(github.app_id, github.private_key_pem),
        base_url=github.api_url,
        http_cache=False,
        auto_retry=False,
        cache_strategy=MemCacheStrategy(),
    )
    ok = github.deliver("issue_comment", trigger())
    # Another comment (a replay of `ok`'s content would be a duplicate, whatever its id).
    bad = github.deliver("issue_comment", trigger(8), url=github.webhook_url, secret="wrong")
    gone = github.deliver("issue_comment", trigger(), url=f"http://127.0.0.1:{free_port()}/x")
    assert (ok.status_code, bad.status_code) == (202, 401)
    assert (gone.status_code, gone.status) == (0, "failed to connect")

    listed = app.rest.apps.list_webhook_deliveries(per_page=2)
    assert [d.id for d in listed.parsed_data] == [gone.id, bad.id]  # newest first, typed
    assert listed.headers["link"] == (
        f'<{github.api_url}/app/hook/deliveries?per_page=2&cursor=v1_{ok.id}>; rel="next"'
    )
    page2 = app.rest.apps.list_webhook_deliveries(per_page=2, cursor=f"v1_{ok.id}")
    assert [d.id for d in page2.parsed_data] == [ok.id] and "link" not in page2.headers
    failures = app.rest.apps.list_webhook_deliveries(status="failure").json()
    assert [d["id"] for d in failures] == [bad.id]
    successes = app.rest.apps.list_webhook_deliveries(status="success").json()
    assert [d["id"] for d in successes] == [ok.id]
    item = listed.json()[1]
    assert item == {
        "id": bad.id,
        "guid": bad.guid,
        "delivered_at": item["delivered_at"],
        "redelivery": False,
        "duration": bad.duration,
        "status": "Invalid HTTP Response: 401",
        "status_code": 401,
        "event": "issue_comment",
        "action": "created",
        "installation_id": INSTALLATION,
        "repository_id": trigger()["repository"]["id"],
        "throttled_at": None,
    }

    full = app.rest.apps.get_webhook_delivery(ok.id)
    assert full.parsed_data.guid == ok.guid
    body = full.json()
    assert body["request"]["payload"] == trigger()
    assert body["request"]["headers"]["X-GitHub-Delivery"] == ok.guid
    assert body["url"] == github.webhook_url
    assert '"status":"queued"' in body["response"]["payload"].replace(" ", "")

    accepted = app.rest.apps.redeliver_webhook_delivery(bad.id)
    assert accepted.status_code == 202 and accepted.json() == {}
    github.settle()
    again = github.deliveries_of(bad.guid)[-1]
    # Redelivered to the webhook's URL with its current secret: this time it gets in.
    assert (again.redelivery, again.status_code, again.id > gone.id) == (True, 202, True)

    for call, status in (
        (lambda: app.rest.apps.get_webhook_delivery(999), 404),
        (lambda: app.rest.apps.redeliver_webhook_delivery(999), 404),
        (lambda: app.rest.apps.list_webhook_deliveries(cursor="v1_999"), 422),
        (lambda: app.rest.apps.list_webhook_deliveries(cursor="bogus"), 422),
    ):
        with pytest.raises(RequestFailed) as info:
            call()
        assert info.value.response.status_code == status

    token = github.mint_token(INSTALLATION)
    as_installation = GitHub(
        TokenAuthStrategy(token), base_url=github.api_url, http_cache=False, auto_retry=False
    )
    with pytest.raises(RequestFailed) as info:
        as_installation.rest.apps.list_webhook_deliveries()
    assert info.value.response.status_code == 401  # App JWT only

    seen = {(r.method, r.template) for r in github.responses if 200 <= r.status < 300}
    assert set(HOOK_ROUTES) <= seen


# --------------------------------------------------------------------------- scheduling


def test_schedule_sweep_books_one_sweep_per_slot_at_the_front(redis, redis_url):
    queue = session_queue(redis, "sessions")
    queue.enqueue_call("jobs.session.pipeline.run_session", job_id="session-waiting")
    before = sweep_job_id()
    job_id = schedule_sweep(queue)
    assert job_id in (before, sweep_job_id())  # named after the current 10-minute slot
    assert schedule_sweep(queue) is None  # another worker, same slot: nothing more
    assert queue.job_ids == [job_id, "session-waiting"]
    job = queue.fetch_job(job_id)
    assert job.func_name == SWEEP_JOB and job.kwargs == {}

    dead = session_queue(Redis.from_url(f"redis://127.0.0.1:{free_port()}/0"), "sessions")
    assert schedule_sweep(dead) is None  # never raises into the worker's loop


class SweepingWorker(SimpleWorker):
    """What jobs/worker.py does (a forking Worker there; in-process here)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.booked: list[str | None] = []

    def run_maintenance_tasks(self) -> None:
        super().run_maintenance_tasks()
        self.booked.append(schedule_sweep(self.queues[0]))


def test_a_worker_sweeps_at_start(github, gate, redis, redis_url, monkeypatch):
    gate.close()
    lost = github.deliver("issue_comment", trigger())
    gate.open()
    for name, value in {
        "GITHUB_APP_ID": str(github.app_id),
        "GITHUB_PRIVATE_KEY": github.private_key_pem,
        "GITHUB_API_URL": github.api_url,
        "REDIS_URL": redis_url,
    }.items():
        monkeypatch.setenv(name, value)
    queue = session_queue(redis, "sessions")
    worker = SweepingWorker([queue], connection=redis, serializer=JSONSerializer)
    assert worker.work(burst=True, max_jobs=1)
    assert len(worker.booked) == 1 and worker.booked[0] is not None
    job = queue.fetch_job(worker.booked[0])
    assert job is not None and job.is_finished, job and job.latest_result()
    result = job.return_value()
    assert result["redelivered"] == [lost.guid] and result["errors"] == []
    github.settle()
    assert queued(redis_url) == [f"session-{lost.guid}"]
    assert redelivery.window_for(WorkerSettings.parse()) == 7 * DAY
