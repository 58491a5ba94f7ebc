#!/usr/bin/env python3
"""Open-loop load test of `POST /webhooks` against gunicorn as deployed, on loopback only.

    .venv/bin/python bench/load_webhooks.py                 # 1,000 deliveries/s for 30 s
    .venv/bin/python bench/load_webhooks.py --rate 1500 --duration 10

What it does, in order:

1. Builds every delivery up front: GitHub's own example payloads (tests/support.py), signed with
   the secret; 30% `/claude` comments that start a session, 60% deliveries that are ignored
   (comments without a command, pushes, stars, CI events, ...), 10% redeliveries of an earlier
   triggering delivery (same `X-GitHub-Delivery`, as GitHub's "Redeliver" sends).
2. Measures the generator's own ceiling against a trivial HTTP server (the baseline): the rate
   it reaches flat out, and its latency floor at the target rate. Figures below are read
   against it, because the machine is shared and absolute numbers drift.
3. Starts a redis-server of its own (random port, no persistence) and the Procfile's `web:` line
   (gunicorn with gunicorn.conf.py) with GITHUB_WEBHOOK_SECRET, REDIS_URL, PORT, WEB_CONCURRENCY.
4. Sends a short warm-up, then the deliveries open-loop: delivery i is due at t0 + i/rate and
   its latency is measured from that due time, so a slow server cannot hide its queueing by
   slowing the sender down (no coordinated omission).
5. Prints the achieved rate, status counts, p50/p90/p99/max latency, CPU per delivery, and the
   exactly-once check: the RQ queue holds one job per distinct triggering delivery, each answered
   202 once and 200 "duplicate" otherwise; nothing lost, nothing extra.

Exit status 0 only when the target rate was held, every delivery was answered 2xx within
GitHub's 10 s and the exactly-once check passed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import (  # noqa: E402
    free_port,
    issue_comment_payload,
    sign,
    webhook_example,
)

HOST = "127.0.0.1"  # the only address this script ever sends to
SECRET = "load-test-secret"
QUEUE = "sessions"
GITHUB_TIMEOUT = 10.0  # GitHub gives up on a delivery after 10 s


# --------------------------------------------------------------------------------------------
# Deliveries
# --------------------------------------------------------------------------------------------


@dataclass
class Delivery:
    event: str
    delivery_id: str
    body: bytes
    kind: str  # trigger | ignored | duplicate
    head: bytes = b""


def _pointed(payload: dict, repo: str, installation: int = 4242) -> dict:
    owner, name = repo.split("/")
    if isinstance(payload.get("repository"), dict):
        payload["repository"].update(full_name=repo, name=name)
        payload["repository"].setdefault("owner", {})["login"] = owner
    payload.setdefault("installation", {"node_id": "MDIz"})["id"] = installation
    if isinstance(payload.get("sender"), dict):
        payload["sender"].update(type="User")
    return payload


def _ignored_bodies(repos: list[str]) -> list[tuple[str, bytes, float]]:
    """(event, body, weight): traffic an installation sends that starts nothing."""
    out: list[tuple[str, dict, float]] = []
    for i, repo in enumerate(repos[:8]):
        chatter = issue_comment_payload(repo, 100 + i, "LGTM, thanks! Merging after CI.", 4242)
        out.append(("issue_comment", chatter, 20 / 8))
        edited = issue_comment_payload(repo, 100 + i, "/claude fix it", 4242)
        edited["action"] = "edited"
        out.append(("issue_comment", edited, 5 / 8))
        push = _pointed(webhook_example("push", None), repo)
        push["repository"]["default_branch"] = "main"
        push["ref"] = f"refs/heads/feature-{i}"
        out.append(("push", push, 10 / 8))
        sync = _pointed(webhook_example("pull_request", "synchronize"), repo)
        sync["pull_request"]["labels"] = []
        out.append(("pull_request", sync, 5 / 8))
        out.append(
            ("pull_request", _pointed(webhook_example("pull_request", "opened"), repo), 5 / 8)
        )
        out.append(("star", _pointed(webhook_example("star", "created"), repo), 3 / 8))
        out.append(("watch", _pointed(webhook_example("watch", "started"), repo), 2 / 8))
        out.append(("check_run", _pointed(webhook_example("check_run", "completed"), repo), 4 / 8))
        out.append(
            ("workflow_run", _pointed(webhook_example("workflow_run", "completed"), repo), 3 / 8)
        )
        out.append(
            ("workflow_job", _pointed(webhook_example("workflow_job", "queued"), repo), 3 / 8)
        )
    return [(event, json.dumps(p).encode(), w) for event, p, w in out]


def _trigger_payloads(repos: list[str], count: int = 64) -> list[dict]:
    asks = [
        "fix the flaky test",
        "add a CONTRIBUTING.md",
        "review the error handling",
        "document the retry policy\nand add an example",
    ]
    payloads = []
    for i in range(count):
        repo = repos[i % len(repos)]
        payloads.append(issue_comment_payload(repo, 1 + i, f"/claude {asks[i % len(asks)]}", 4242))
    return payloads


def _trigger_body(template: dict, comment_id: int) -> bytes:
    """A new comment (its own id): the front door runs one session per comment, so a second
    delivery of the same comment under another delivery id is a duplicate by content."""
    payload = {**template, "comment": {**template["comment"], "id": comment_id}}
    return json.dumps(payload).encode()


def build_deliveries(
    count: int, seed: int, prefix: str, port: int, keep_alive: bool = False
) -> list[Delivery]:
    """`count` signed deliveries: 30% triggering, 60% ignored, 10% redeliveries of a trigger."""
    rng = random.Random(seed)
    repos = [f"load-org/repo-{i}" for i in range(16)]
    ignored = _ignored_bodies(repos)
    ignored_weights = [w for _, _, w in ignored]
    triggers = _trigger_payloads(repos)
    signatures: dict[bytes, str] = {}
    out: list[Delivery] = []
    sent_triggers: list[Delivery] = []
    for i in range(count):
        roll = rng.random()
        # A redelivery repeats one sent a little earlier (not within the last few, so that
        # usually the first answer is out; a race between the two is allowed and checked).
        if roll < 0.10 and len(sent_triggers) > 20:
            first = sent_triggers[rng.randrange(0, len(sent_triggers) - 10)]
            out.append(Delivery(first.event, first.delivery_id, first.body, "duplicate"))
            continue
        if roll < 0.40:
            body = _trigger_body(triggers[i % len(triggers)], 10_000_000 + seed * 1_000_000 + i)
            d = Delivery("issue_comment", f"{prefix}-{i:06d}", body, "trigger")
            sent_triggers.append(d)
        else:
            event, body, _ = rng.choices(ignored, ignored_weights)[0]
            d = Delivery(event, f"{prefix}-{i:06d}", body, "ignored")
        out.append(d)
    for d in out:
        sig = signatures.get(d.body) or signatures.setdefault(d.body, sign(SECRET, d.body))
        d.head = (
            f"POST /webhooks HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            "User-Agent: GitHub-Hookshot/load\r\nAccept: */*\r\n"
            + ("" if keep_alive else "Connection: close\r\n")
            + "Content-Type: application/json\r\n"
            f"Content-Length: {len(d.body)}\r\n"
            f"X-GitHub-Event: {d.event}\r\nX-GitHub-Delivery: {d.delivery_id}\r\n"
            f"X-GitHub-Hook-ID: 1\r\nX-Hub-Signature-256: {sig}\r\n\r\n"
        ).encode()
    return out


# --------------------------------------------------------------------------------------------
# A small HTTP/1.1 client: raw asyncio protocol, keep-alive when the server allows it
# --------------------------------------------------------------------------------------------


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future | None = None
        self.closed = False
        self.used = 0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._parse(eof=False)

    def eof_received(self):
        self._parse(eof=True)
        return False

    def connection_lost(self, exc) -> None:
        self.closed = True
        self._parse(eof=True)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"closed after {len(self.buf)} bytes"))

    def _parse(self, eof: bool) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length, close = None, lines[0].startswith("HTTP/1.0")
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection":
                close = value.strip().lower() == "close"
        start = end + 4
        if length is None:
            if not eof:
                return
            length, close = len(self.buf) - start, True
        if len(self.buf) - start < length:
            return
        body = bytes(self.buf[start : start + length])
        del self.buf[: start + length]
        waiter.set_result((status, body, close))

    def send(self, head: bytes, body: bytes) -> asyncio.Future:
        self.waiter = asyncio.get_running_loop().create_future()
        self.used += 1
        self.transport.writelines((head, body))
        return self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Pool:
    """At most `size` connections in flight; idle keep-alive connections are reused."""

    def __init__(self, port: int, size: int) -> None:
        self.port = port
        self.sem = asyncio.Semaphore(size)
        self.idle: list[_Conn] = []
        self.opened = 0
        self.retried = 0

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_Conn, HOST, self.port)
        self.opened += 1
        return conn

    async def request(self, head: bytes, body: bytes, timeout: float) -> tuple[int, bytes]:
        async with self.sem:
            while True:
                conn = None
                while self.idle and conn is None:
                    candidate = self.idle.pop()
                    conn = None if candidate.closed else candidate
                reused = conn is not None
                try:
                    # One timer per request (connect, send, answer): cheaper than wait_for.
                    async with asyncio.timeout(timeout):
                        if conn is None:
                            conn = await self._connect()
                        status, data, close = await conn.send(head, body)
                except ConnectionError:
                    if conn is None:
                        raise
                    conn.close()
                    # A keep-alive connection the server closed as we reused it: nothing was
                    # read, so the request never reached the app. Send it again, once, fresh.
                    if reused and not conn.buf:
                        self.retried += 1
                        continue
                    raise
                except BaseException:
                    if conn is not None:
                        conn.close()
                    raise
                if close or conn.closed:
                    conn.close()
                else:
                    self.idle.append(conn)
                return status, data

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


@dataclass
class Result:
    latency: float = math.nan  # seconds from the due time to the whole answer
    status: int = 0  # 0: no answer (error or timeout)
    body: bytes = b""
    error: str = ""


@dataclass
class Run:
    results: list[Result]
    elapsed_send: float  # from the first due time to the last send
    elapsed_all: float  # to the last answer
    lag: list[float] = field(default_factory=list)  # how late the sender was, per delivery
    cpu: float = 0.0  # the generator's own CPU seconds
    opened: int = 0
    retried: int = 0


async def open_loop(
    port: int,
    deliveries: list[Delivery],
    rate: float | None,
    connections: int,
    timeout: float = GITHUB_TIMEOUT,
    max_wait: float = 300,
) -> Run:
    """Send every delivery at its due time (rate None: flat out, `connections` in flight).

    Answers are awaited up to `max_wait` seconds after the last send; later ones are given up.
    """
    loop = asyncio.get_running_loop()
    clock = time.perf_counter  # uvloop's loop.time() counts whole milliseconds
    pool = Pool(port, connections)
    results = [Result() for _ in deliveries]
    lag = [0.0] * len(deliveries)
    cpu0 = time.process_time()

    async def one(i: int, due: float) -> None:
        d = deliveries[i]
        try:
            status, body = await pool.request(d.head, d.body, timeout)
        except (TimeoutError, OSError) as exc:
            results[i] = Result(clock() - due, 0, b"", type(exc).__name__)
            return
        results[i] = Result(clock() - due, status, body)

    tasks = []
    t0 = clock() + 0.02
    if rate is None:
        # Closed loop at full speed: the ceiling of this client.
        it = iter(range(len(deliveries)))

        async def lane() -> None:
            for i in it:
                await one(i, clock())

        await asyncio.gather(*(lane() for _ in range(connections)))
        last_send = clock()
    else:
        interval = 1.0 / rate
        for i in range(len(deliveries)):
            due = t0 + i * interval
            late = clock() - due
            if late < 0:
                await asyncio.sleep(-late)
                late = clock() - due
            lag[i] = max(late, 0.0)
            tasks.append(loop.create_task(one(i, due)))
        last_send = clock()
        _, pending = await asyncio.wait(tasks, timeout=max_wait)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for r in results:
            if not r.status and not r.error:
                r.error = "gave up"
    end = clock()
    pool.close()
    run = Run(results, last_send - t0, end - t0, lag, time.process_time() - cpu0)
    run.opened, run.retried = pool.opened, pool.retried
    return run


# --------------------------------------------------------------------------------------------
# The trivial server of the baseline (a process of its own, like gunicorn)
# --------------------------------------------------------------------------------------------

TRIVIAL_REPLY = b'{"status":"ignored"}'


class _Trivial(asyncio.Protocol):
    keep_alive = True

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).lower()
            at = head.find(b"content-length:")
            length = int(head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else 0
            if len(self.buf) < end + 4 + length:
                return
            del self.buf[: end + 4 + length]
            conn = b"keep-alive" if self.keep_alive else b"close"
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: "
                + conn
                + b"\r\nContent-Length: %d\r\n\r\n" % len(TRIVIAL_REPLY)
                + TRIVIAL_REPLY
            )
            if not self.keep_alive:
                self.transport.close()
                return


def trivial_server(port: int, keep_alive: bool) -> None:
    _Trivial.keep_alive = keep_alive

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_Trivial, HOST, port, backlog=4096)
        async with server:
            await server.serve_forever()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    asyncio.run(main())


# --------------------------------------------------------------------------------------------
# Processes: redis-server, gunicorn (the Procfile's web: line), the trivial server
# --------------------------------------------------------------------------------------------


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 within {timeout:.0f}s")


def wait_port(port: int, timeout: float) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {HOST}:{port} after {timeout:.0f}s")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def procfile_web(root: Path) -> str:
    for line in (root / "Procfile").read_text().splitlines():
        if line.startswith("web:"):
            return line.split(":", 1)[1].strip()
    raise RuntimeError("the Procfile has no web: line")


def cpu_seconds(pids: list[int]) -> tuple[float, float]:
    """(user, system) CPU seconds of these processes, from /proc (0 for one that is gone)."""
    tick = os.sysconf("SC_CLK_TCK")
    user = system = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user, system = user + int(fields[11]), system + int(fields[12])
    return user / tick, system / tick


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def pressure() -> float | None:
    """The share of the last 10 s in which some runnable task waited for a CPU (Linux PSI)."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        return float(line.split()[1].split("=")[1])
    except (OSError, IndexError, ValueError):
        return None


def cpu_pressure() -> str:
    value = pressure()
    return "unknown" if value is None else f"{value:.0f}%"


def wait_for_quiet(below: float, patience: float) -> None:
    """On a shared machine, wait (a bounded time) until other work leaves the CPUs mostly free."""
    deadline = time.monotonic() + patience
    while (value := pressure()) is not None and value > below:
        if time.monotonic() > deadline:
            print(f"  CPU pressure still {value:.0f}% after {patience:.0f} s: starting anyway")
            return
        print(f"  CPU pressure {value:.0f}% > {below:.0f}%: waiting", flush=True)
        time.sleep(10)


def pct(values: list[float], p: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def latency_line(latencies: list[float]) -> str:
    return (
        "  ".join(
            f"{name} {pct(latencies, p) * 1000:.1f}"
            for name, p in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))
        )
        + " ms"
    )


def answer(result: Result) -> str:
    try:
        return json.loads(result.body).get("status", "?")
    except (ValueError, AttributeError):
        return "?"


def baseline(args, deliveries: list[Delivery]) -> dict:
    """The generator against a trivial server: flat-out ceiling, and latency at the target."""
    port = free_port()
    mode = "keep-alive" if args.keep_alive else "close"
    proc = subprocess.Popen(
        [sys.executable, __file__, "--trivial-server", str(port), "--trivial-mode", mode],
        start_new_session=True,
    )
    try:
        wait_port(port, 10)
        flat = asyncio.run(open_loop(port, deliveries[: args.baseline_requests], None, 64))
        n = int(args.rate * args.baseline_seconds)
        paced = asyncio.run(open_loop(port, deliveries[:n], args.rate, args.connections))
    finally:
        stop(proc)
    ceiling = len(flat.results) / flat.elapsed_all
    lat = [r.latency for r in paced.results if r.status]
    print(
        f"  flat out: {ceiling:.0f}/s ({flat.cpu / flat.elapsed_all:.0%} of a core)   "
        f"at {args.rate:.0f}/s for {args.baseline_seconds:.0f} s: {latency_line(lat)}, "
        f"generator CPU {paced.cpu / len(paced.results) * 1000:.2f} ms/delivery"
    )
    return {"ceiling": ceiling, "p50": pct(lat, 50), "p99": pct(lat, 99)}


@dataclass(frozen=True)
class Sent:
    """Deliveries as sent, and how the server answered them (in the same order)."""

    deliveries: list[Delivery]
    run: Run


def report(
    args, measured: Sent, warm_up: Sent, redis_url: str, cpu: dict, base: dict | None
) -> bool:
    from redis import Redis

    deliveries, run = measured.deliveries, measured.run
    warm, warm_run = warm_up.deliveries, warm_up.run
    results = run.results
    n = len(results)
    sent_rate = n / run.elapsed_send if run.elapsed_send else math.inf
    done_rate = n / run.elapsed_all
    statuses = Counter(r.status for r in results)
    errors = Counter(r.error for r in results if r.error)
    answered = [r for r in results if r.status]
    lat = [r.latency for r in answered]
    ok = True

    print(
        f"\n== {n} deliveries in {run.elapsed_all:.1f} s "
        f"({args.rate:.0f}/s wanted for {args.duration:.0f} s)"
    )
    print(
        f"  sent        {sent_rate:8.1f}/s  (sender late: p99 {pct(run.lag, 99) * 1000:.1f} ms, "
        f"max {max(run.lag) * 1000:.1f} ms)"
    )
    print(
        f"  answered    {done_rate:8.1f}/s  ({len(answered)} answers; "
        f"{run.opened} connections opened, {run.retried} resent on a stale keep-alive)"
    )
    print(
        f"  HTTP        {dict(sorted(statuses.items()))}"
        + (f"  errors {dict(errors)}" if errors else "")
    )
    print(f"  latency     {latency_line(lat)}  (from each delivery's due time)")
    by_kind: dict[str, list[float]] = {}
    for d, r in zip(deliveries, results, strict=True):
        if r.status:
            by_kind.setdefault(d.kind, []).append(r.latency)
    for kind, values in sorted(by_kind.items()):
        print(f"    {kind:10s}{len(values):7d}  {latency_line(values)}")
    slow = sum(1 for x in lat if x > 1.0)
    late = sum(1 for x in lat if x > GITHUB_TIMEOUT)
    print(f"  over 1 s    {slow}   over GitHub's 10 s: {late}")
    if cpu:
        print(
            f"  CPU         server {cpu['server'] / n * 1000:.2f} ms/delivery "
            f"(user {cpu['user'] / n * 1000:.2f}, system {cpu['sys'] / n * 1000:.2f}; "
            f"{cpu['server'] / run.elapsed_all:.0%} of a core), redis "
            f"{cpu['redis'] / n * 1000:.2f} ms/delivery, generator "
            f"{run.cpu / n * 1000:.2f} ms/delivery ({run.cpu / run.elapsed_all:.0%})"
        )
        need = (cpu["server"] + cpu["redis"] + run.cpu) / n * args.rate
        print(
            f"  capacity    at {args.rate:.0f}/s these need {need:.2f} of the machine's "
            f"{os.cpu_count()} cores (server, redis and generator); CPU pressure "
            f"{cpu_pressure()}, load average {os.getloadavg()[0]:.1f} at the end"
        )
    if base:
        b = base
        print(
            f"  vs baseline rate {done_rate / args.rate:.2f} of target; target is "
            f"{args.rate / b['ceiling']:.2f} of the generator's ceiling; p50 "
            f"{pct(lat, 50) / b['p50']:.1f}x, p99 {pct(lat, 99) / b['p99']:.1f}x the "
            f"generator's own floor"
        )

    if done_rate < args.rate * 0.98 or sent_rate < args.rate * 0.98:
        print(f"  FAIL: {done_rate:.0f}/s answered, below the {args.rate:.0f}/s target")
        ok = False
    non_2xx = sum(1 for r in results if not 200 <= r.status < 300)
    if non_2xx or late:
        print(f"  FAIL: {non_2xx} deliveries not answered 2xx, {late} answered after 10 s")
        ok = False

    # Exactly once: every distinct triggering delivery, warm-up included, is one RQ job.
    expected: dict[str, list[str]] = {}
    wrong = []
    for d, r in zip(warm + deliveries, warm_run.results + results, strict=True):
        if d.kind in ("trigger", "duplicate"):
            expected.setdefault(d.delivery_id, []).append(answer(r))
        elif answer(r) != "ignored":
            wrong.append(f"{d.event} {d.delivery_id}: {r.status or r.error} {answer(r)}")
    if wrong:
        print(
            f"  FAIL: {len(wrong)} deliveries that start nothing were not answered 'ignored', "
            f"e.g. {wrong[:3]}"
        )
        ok = False
    redis = Redis.from_url(redis_url)
    job_ids = [x.decode() for x in redis.lrange(f"rq:queue:{QUEUE}", 0, -1)]
    jobs = set(job_ids)
    pipe = redis.pipeline(transaction=False)
    for job in job_ids:
        pipe.exists(f"rq:job:{job}")
    saved = sum(pipe.execute())
    claims = sum(1 for _ in redis.scan_iter("claudecluster:delivery:*", count=1000))
    # A delivery without an answer may or may not have been queued: it is counted apart.
    unknown = {i for i, answers in expected.items() if "?" in answers}
    known = {i: answers for i, answers in expected.items() if i not in unknown}
    queued_once = sum(1 for answers in known.values() if answers.count("queued") == 1)
    rest_dup = sum(
        1
        for answers in known.values()
        if answers.count("queued") == 1 and answers.count("duplicate") == len(answers) - 1
    )
    duplicates = sum(len(a) - 1 for a in expected.values())
    measured = {d.delivery_id for d in deliveries if d.kind == "trigger"}
    print(
        f"  exactly once: {len(measured)} distinct triggering deliveries sent "
        f"(+{len(expected) - len(measured)} in the warm-up), {duplicates} redeliveries"
    )
    print(
        f"    RQ queue holds {len(job_ids)} job ids, {len(jobs)} distinct, {saved} job hashes; "
        f"{claims} delivery claims"
    )
    print(
        f"    answered 202 queued exactly once: {queued_once}/{len(known)}; "
        f"every other answer 200 duplicate: {rest_dup}/{len(known)}"
        + (f"; {len(unknown)} without an answer" if unknown else "")
    )
    wanted = {f"session-{i}" for i in known}
    maybe = {f"session-{i}" for i in unknown}
    missing, extra = wanted - jobs, jobs - wanted - maybe
    if (
        missing
        or extra
        or unknown
        or not len(job_ids) == len(jobs) == saved == claims
        or not queued_once == rest_dup == len(known)
    ):
        print(
            f"  FAIL: exactly once not shown: missing {sorted(missing)[:3]}, "
            f"extra {sorted(extra)[:3]}, repeated {len(job_ids) - len(jobs)}, "
            f"unanswered {len(unknown)}"
        )
        ok = False
    else:
        print("    OK: one job per triggering delivery, none lost, none twice")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1000, help="deliveries per second")
    parser.add_argument("--duration", type=float, default=30, help="seconds of sending")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of warm-up traffic")
    parser.add_argument(
        "--connections",
        type=int,
        default=1000,
        help="most requests in flight at once (each its own connection)",
    )
    parser.add_argument(
        "--web-concurrency",
        type=int,
        default=int(os.environ.get("WEB_CONCURRENCY") or os.cpu_count() or 2),
    )
    parser.add_argument(
        "--gunicorn-args",
        default="",
        help="extra gunicorn flags (GUNICORN_CMD_ARGS), to compare settings",
    )
    parser.add_argument("--baseline-seconds", type=float, default=3)
    parser.add_argument("--baseline-requests", type=int, default=20000)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--quiet-below",
        type=float,
        default=0,
        metavar="PCT",
        help="first wait until the CPU pressure (PSI, avg10) is below PCT%% "
        "(the machine is shared); 0: do not wait",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=900,
        metavar="S",
        help="wait at most this long for --quiet-below (default 900 s)",
    )
    parser.add_argument(
        "--root",
        default=str(ROOT),
        help="the checkout to serve (its Procfile, gunicorn.conf.py and app), "
        "e.g. a `git worktree` of an older revision; default: this one",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the temporary folder")
    parser.add_argument(
        "--keep-alive",
        action="store_true",
        help="reuse connections (default: each delivery on a new connection)",
    )
    parser.add_argument("--trivial-server", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--trivial-mode", default="close", help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        import uvloop  # optional: a faster loop for the generator and the trivial server
    except ImportError:
        pass
    else:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if args.trivial_server:
        trivial_server(args.trivial_server, args.trivial_mode == "keep-alive")
        return 0

    port = free_port()
    count = int(args.rate * args.duration)
    t = time.monotonic()
    deliveries = build_deliveries(count, args.seed, "load", port, args.keep_alive)
    warm = build_deliveries(
        int(args.rate * args.warmup), args.seed + 1, "warm", port, args.keep_alive
    )
    kinds = Counter(d.kind for d in deliveries)
    print(
        f"built {count} signed deliveries in {time.monotonic() - t:.1f} s: {dict(kinds)}; "
        f"{len({d.body for d in deliveries})} distinct bodies, "
        f"{sum(len(d.body) for d in deliveries) / count / 1024:.1f} KiB on average"
    )
    print(
        f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}, "
        f"CPU pressure {cpu_pressure()}; "
        f"loop {type(asyncio.new_event_loop()).__module__}"
    )

    if args.quiet_below > 0:
        wait_for_quiet(args.quiet_below, args.quiet_wait)
    base = None
    if not args.skip_baseline:
        print(
            "baseline: this generator against a trivial HTTP server "
            f"({'keep-alive' if args.keep_alive else 'a new connection per delivery'})"
        )
        base = baseline(args, deliveries)

    redis_bin = shutil.which("redis-server")
    if redis_bin is None:
        print("redis-server is not installed (apt-get install redis-server)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="load-webhooks-"))
    redis_port = free_port()
    redis_url = f"redis://{HOST}:{redis_port}/0"
    redis_proc = subprocess.Popen(
        [
            redis_bin,
            "--port",
            str(redis_port),
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp),
        ],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    env = {
        **os.environ,
        "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "GITHUB_WEBHOOK_SECRET": SECRET,
        "REDIS_URL": redis_url,
        "HOST": HOST,
        "PORT": str(port),
        "WEB_CONCURRENCY": str(args.web_concurrency),
        "QUEUE_NAME": QUEUE,
    }
    if args.gunicorn_args:
        env["GUNICORN_CMD_ARGS"] = args.gunicorn_args
    root = Path(args.root).resolve()
    web = procfile_web(root)
    log = (tmp / "gunicorn.log").open("wb")
    print(
        f"server: {web} in {root}  (WEB_CONCURRENCY={args.web_concurrency}"
        + (f", GUNICORN_CMD_ARGS={args.gunicorn_args!r}" if args.gunicorn_args else "")
        + f"; log {tmp / 'gunicorn.log'})"
    )
    gunicorn = subprocess.Popen(
        ["/bin/sh", "-c", f"exec {web}"],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    ok = False
    try:
        wait_http(f"http://{HOST}:{port}/healthz", 30)
        workers = children(gunicorn.pid)
        print(f"  gunicorn master {gunicorn.pid}, workers {workers}")
        warm_run = asyncio.run(open_loop(port, warm, args.rate, args.connections))
        warm_lat = [r.latency for r in warm_run.results if r.status]
        print(f"warm-up: {len(warm)} deliveries, {latency_line(warm_lat)}")
        pids = [gunicorn.pid, *children(gunicorn.pid)]
        cpu0 = cpu_seconds(pids), cpu_seconds([redis_proc.pid])
        run = asyncio.run(open_loop(port, deliveries, args.rate, args.connections))
        now = [gunicorn.pid, *children(gunicorn.pid)]
        if sorted(now) != sorted(pids):
            print(f"  note: workers changed during the run ({pids} -> {now})")
        server, redis_cpu = cpu_seconds(pids), cpu_seconds([redis_proc.pid])
        cpu = {
            "user": server[0] - cpu0[0][0],
            "sys": server[1] - cpu0[0][1],
            "redis": sum(redis_cpu) - sum(cpu0[1]),
        }
        cpu["server"] = cpu["user"] + cpu["sys"]
        ok = report(args, Sent(deliveries, run), Sent(warm, warm_run), redis_url, cpu, base)
    finally:
        stop(gunicorn)
        stop(redis_proc)
        log.close()
        if not args.keep_logs:
            shutil.rmtree(tmp, ignore_errors=True)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
