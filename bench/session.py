#!/usr/bin/env python3
"""Where a session's seconds go: N sessions end to end on real parts, each phase timed from outside.

    .venv/bin/python -m bench.session                          # 5 sessions, 1 s of model think time
    .venv/bin/python -m bench.session --sessions 10 --think 2 --repo-files 5000 \\
        --runtime runsc --pool 2 --cache on --chart /tmp/phases.png --json /tmp/phases.json

The service runs as in the end-to-end tests (tests/e2e/conftest.py: every Procfile line, a
redis-server of its own, dockerd and the agent image running the real CLI); only GitHub and the
Anthropic API are stand-ins. The model is scripted (a Write of a file, then a summary), each
answer after `--think` seconds, so the model's share of a session is known. After a warm-up
session, one signed `/claude` comment at a time is delivered to /webhooks, so phases of two
sessions never overlap, and each session's phases are read from the stand-ins' records and the
Docker engine's events (bench/session_marks.py). Floors, measured in the same run on the same
parts (bench/session_floors.py): `docker run … true` with the sandbox flags, a plain-git clone
and fetch of the same repository from the same stand-in, and the CLI's start in an idle container.

Printed: per phase the median and p90 and its ratio to its floor, then the session overhead: a
session's wall time (delivery to final comment) minus the CLI's own time (first model request
to its exit), median, against the target of 2 s.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.session_floors import FloorRun, measure
from bench.session_marks import DockerEvents, Observed, Session, phases
from bench.session_report import chart, report, summary
from jobs.github.pacing import GAP
from tests.e2e.conftest import INSTALLATION, MODEL_KEY, StandIns, run_service
from tests.standins.anthropic import AnthropicStandIn, Text, ToolUse
from tests.standins.github import GitHubStandIn
from tests.support import RedisServer, wait_for

REPO = "bench-org/session"
USER, USER_ID = "octocat", 583231
PERMISSIONS = {
    "checks": "write",
    "contents": "write",
    "issues": "write",
    "pull_requests": "write",
    "metadata": "read",
}


@dataclass(frozen=True)
class Options:
    sessions: int
    think: float
    repo_files: int
    runtime: str
    pool: int
    cache: str
    spacing: float
    image: str
    floor_rounds: int
    chart: Path | None
    json: Path | None
    trail: bool


class _Temp:
    """What run_service wants of pytest's tmp_path_factory: new directories by name."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def mktemp(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.root))


def repository_files(count: int) -> dict[str, str]:
    """`count` small source files in a few directories, a README among them."""
    files = {"README.md": "# session bench\n"}
    for n in range(count - 1):
        files[f"src/pkg{n % 50}/mod{n}.py"] = f"def f{n}():\n    return {n}\n"
    return files


def github_stand_in(opts: Options) -> GitHubStandIn:
    gh = GitHubStandIn().start()
    gh.add_installation(INSTALLATION, REPO.split("/")[0], permissions=PERMISSIONS)
    gh.add_repo(REPO, INSTALLATION, files=repository_files(opts.repo_files))
    gh.add_user(USER, USER_ID)
    gh.add_collaborator(REPO, USER, "write")
    return gh


def new_issue(gh: GitHubStandIn) -> int:
    # Issues and pull requests share one sequence of numbers, as on GitHub.
    taken = [i.number for i in gh.issues] + [p.number for p in gh.pulls]
    number = max([99, *taken]) + 1
    gh.add_issue(REPO, number, f"Write note {number}", "Please.", USER, USER_ID)
    return number


def one_session(service, observed: Observed, think: float) -> dict:
    """Deliver `/claude` on a new issue and wait for its final comment; its marks, its phases
    and its trail."""
    number = new_issue(service.github)
    name = f"notes/session-{number}.md"
    observed.model.reset()
    observed.model.script(
        [
            ToolUse("Write", {"file_path": f"/workspace/{name}", "content": "note\n"}, delay=think),
            Text(f"Wrote {name}.", delay=think),
        ]
    )
    delivered = time.time()
    response = service.comment(number, f"/claude write {name}", repo=REPO)
    accepted = time.time()
    if response.status_code != 202:
        raise SystemExit(f"the delivery was answered {response.status_code}: {response.text}")
    final = service.wait_final(number, timeout=600, repo=REPO)
    if "state=done" not in final.body:
        raise SystemExit(f"session on #{number} failed:\n{final.body}\n{service.tail('worker')}")
    seen = Session(service.comments(number, REPO)[0].id, delivered, accepted)
    # The final edit is seen before the worker's last records settle: wait for the pull request.
    for _ in range(100):
        try:
            marks = observed.read(seen)
            break
        except LookupError:
            time.sleep(0.1)
    else:
        marks = observed.read(seen)
    ended = marks["final comment"]
    # The session's last steps (the check run's completion, the token's revocation) come after
    # the final edit: the next session starts once they are done, so that no two overlap.
    wait_for(
        lambda: [r for r in service.github.requests if r.at > ended and _revoke(r)],
        120,
        what="the session's token to be revoked",
    )
    return {"marks": marks, "phases": phases(marks), "trail": observed.trail(seen, marks)}


def sessions_spaced(service, observed: Observed, opts: Options) -> list[dict]:
    """The timed sessions, each delivered `spacing` seconds after the last one's end: the
    installation's write pacing (a second between its writes, jobs/github/pacing.py) would
    otherwise hold the next tracking comment until a second after the last one's final edit,
    a wait no request that comes later than that meets."""
    timed = []
    for _ in range(opts.sessions):
        time.sleep(opts.spacing)
        timed.append(one_session(service, observed, opts.think))
    return timed


def _revoke(request) -> bool:
    return request.method == "DELETE" and request.path.endswith("/installation/token")


def run(opts: Options) -> dict:
    overrides = {
        "SANDBOX_RUNTIME": opts.runtime,
        "SANDBOX_POOL_SIZE": str(opts.pool),
        "REPO_CACHE": "true" if opts.cache == "on" else "false",
    }
    with tempfile.TemporaryDirectory(prefix="bench-session-") as tmp:
        redis = RedisServer(Path(tmp))
        redis.start()
        gh = github_stand_in(opts)
        model = AnthropicStandIn(expected_api_key=MODEL_KEY).start()
        events = DockerEvents(Path(tmp))
        stand_ins = StandIns(gh, model, redis.url, opts.image)
        try:
            with run_service("bench", 0, stand_ins, _Temp(Path(tmp)), **overrides) as service:
                observed = Observed(gh, model, events)
                one_session(service, observed, opts.think)  # warm-up, not counted
                sessions = sessions_spaced(service, observed, opts)
            token = gh.mint_token(INSTALLATION, [REPO.split("/")[1]], {"contents": "read"})
            floors = measure(
                FloorRun(opts.image, opts.runtime, f"{gh.url}/{REPO}.git", token, opts.floor_rounds)
            )
        finally:
            events.close()
            model.stop()
            gh.stop()
            redis.stop()
    return {
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()},
        "floors": floors,
        "sessions": sessions,
        **summary([s["marks"] for s in sessions], floors, opts.cache == "on", 2 * opts.think),
    }


def options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=5, help="timed sessions (after 1 warm-up)")
    parser.add_argument("--think", type=float, default=1.0, help="seconds per model answer")
    parser.add_argument("--repo-files", type=int, default=20, help="files in the repository")
    parser.add_argument("--runtime", choices=["runc", "runsc"], default="runc")
    parser.add_argument("--pool", type=int, default=1, help="SANDBOX_POOL_SIZE of the worker")
    parser.add_argument("--cache", choices=["on", "off"], default="on", help="REPO_CACHE")
    parser.add_argument(
        "--spacing",
        type=float,
        default=GAP,
        help="seconds from a session's end to the next delivery (default: the pacer's gap)",
    )
    parser.add_argument("--image", default="claudecluster/agent:latest")
    parser.add_argument("--floor-rounds", type=int, default=5, help="rounds of each floor")
    parser.add_argument("--chart", type=Path, help="a PNG of the phases against their floors")
    parser.add_argument("--json", type=Path, help="every figure as JSON")
    parser.add_argument(
        "--trail", action="store_true", help="print what the last session was seen doing, when"
    )
    args = parser.parse_args(argv)
    if args.sessions < 1 or args.repo_files < 1 or args.floor_rounds < 1:
        parser.error("--sessions, --repo-files and --floor-rounds must be at least 1")
    if args.think < 0 or args.pool < 0 or args.spacing < 0:
        parser.error("--think, --pool and --spacing cannot be negative")
    return Options(**{k.replace("-", "_"): v for k, v in vars(args).items()})


def main(argv: list[str] | None = None) -> int:
    opts = options(argv)
    # Stopped, the bench still stops the service it started (the finally blocks run).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = run(opts)
    print(report(result))
    if opts.trail:
        print("\nthe last session, seconds from its delivery:")
        print("\n".join(result["sessions"][-1]["trail"]))
    if opts.json:
        opts.json.write_text(json.dumps(result, indent=2) + "\n")
    if opts.chart:
        chart(result, opts.chart)
    return 0


if __name__ == "__main__":
    sys.exit(main())
