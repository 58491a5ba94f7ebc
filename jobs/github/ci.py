"""What is failing on a pull request's head: its check runs, and the logs of its failing jobs.

`/claude fix ci` reads the head commit's check runs (`checks: read`); for those GitHub Actions
ran, the workflow jobs of that commit (`actions: read`) name the failed steps and give the job's
log, of which only the tail is kept (the failing step is the last that ran). Our own check run,
the one a session shows on its pull request (jobs/github/checks.py), is never a failure to fix:
it is told apart by its App and by the session id it carries.

Everything read here was written by the pull request's code and its workflows: the session
quotes it to Claude as material (jobs/session/material.py), redacted and bounded; it is never
an instruction.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from githubkit.exception import GitHubException

from jobs.common.queue import is_session_id
from jobs.common.redact import redactor
from jobs.github.client import LogUnavailable, RepoSession

log = logging.getLogger(__name__)

FAILED = frozenset({"failure", "timed_out"})
PENDING = frozenset({"queued", "in_progress", "waiting", "requested", "pending"})
MAX_FAILURES = 10  # check runs named; past this the rest are counted
MAX_LOGS = 5  # job logs read
LOG_TAIL = 8_000  # characters of one job's log
LOGS_TOTAL = 24_000  # characters of all the logs together
PARTIAL_LINE = 1_000  # dropped from the start of a cut log when no line ends sooner
SUMMARY = 2_000  # characters of a check run's own output (other CI systems)
# Actions prefixes each log line with its time: `2026-12-04T04:00:00.1234567Z `.
_STAMP = re.compile(r"^\ufeff?\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z ", re.MULTILINE)


@dataclass
class Failure:
    """One failing check run of the head, as Claude is shown it."""

    name: str
    conclusion: str
    url: str
    summary: str = ""  # the run's own title and summary, for CI that is not Actions
    failed_steps: list[str] = field(default_factory=list)
    log: str = ""  # the tail of its job's log, redacted
    note: str = ""  # why there is no log, or that it was cut


@dataclass
class CiReport:
    sha: str
    failures: list[Failure]
    pending: list[str]  # names of check runs still running
    passed: int
    more: int = 0  # failing check runs past MAX_FAILURES


def is_ours(run: dict, app_id: int | None) -> bool:
    """A session's check run: made by this App, or carrying a session id."""
    app = run.get("app") or {}
    return (app_id is not None and app.get("id") == app_id) or is_session_id(
        str(run.get("external_id") or "")
    )


def read_ci(github: RepoSession, sha: str, app_id: int | None) -> CiReport:
    runs = [r for r in github.check_runs_for(sha) if not is_ours(r, app_id)]
    failing = [r for r in runs if r.get("conclusion") in FAILED]
    pending = [str(r.get("name")) for r in runs if r.get("status") in PENDING]
    report = CiReport(
        sha,
        [
            Failure(
                name=str(r.get("name") or "check"),
                conclusion=str(r.get("conclusion")),
                url=str(r.get("html_url") or ""),
                summary=_output_text(r),
            )
            for r in failing[:MAX_FAILURES]
        ],
        pending,
        passed=len(runs) - len(failing) - len(pending),
        more=max(len(failing) - MAX_FAILURES, 0),
    )
    if report.failures:
        named = dict(zip((int(r["id"]) for r in failing), report.failures, strict=False))
        _add_job_logs(github, sha, report, named)
    return report


def _output_text(run: dict) -> str:
    output = run.get("output") or {}
    text = "\n\n".join(str(output.get(k)) for k in ("title", "summary") if output.get(k))
    return redactor(text[:SUMMARY])


def _add_job_logs(
    github: RepoSession, sha: str, report: CiReport, by_check_run: dict[int, Failure]
) -> None:
    """The failed steps and the log tail of each failing check run GitHub Actions ran."""
    if not github.holds("actions", "read"):
        for failure in report.failures:
            failure.note = "its log is not readable: the App's `actions: read` is not granted"
        return
    jobs = []
    try:
        for run in github.workflow_runs_for(sha):
            jobs += github.jobs_of_run(int(run["id"]))
    except GitHubException as exc:
        log.warning("workflow jobs of %s unreadable (%s)", sha[:12], type(exc).__name__)
        return
    budget, read = LOGS_TOTAL, 0
    for job in jobs:
        failure = by_check_run.get(_check_run_id(job))
        if failure is None:
            continue
        steps = job.get("steps") or []
        failure.failed_steps = [str(s.get("name")) for s in steps if s.get("conclusion") in FAILED]
        if read >= MAX_LOGS or budget <= 0:
            failure.note = "its log is left out: the other failures' logs fill the room"
            continue
        failure.log, cut = _log_tail(github, int(job["id"]), min(LOG_TAIL, budget), failure)
        if cut:
            failure.note = "only the end of its log is shown"
        budget -= len(failure.log)
        read += 1


def _check_run_id(job: dict) -> int:
    # A job names its check run by URL (`…/check-runs/{id}`).
    tail = str(job.get("check_run_url") or "").rstrip("/").rsplit("/", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def _log_tail(github: RepoSession, job_id: int, limit: int, failure: Failure) -> tuple[str, bool]:
    try:
        # Bytes for characters: the stamps stripped below leave room to spare.
        text, cut = github.job_log(job_id, limit * 2)
    except (GitHubException, LogUnavailable) as exc:
        failure.note = "its log could not be read"
        log.warning("log of job %s unreadable (%s)", job_id, type(exc).__name__)
        return "", False
    # Redacted here, before anything else sees it: a log may print what a workflow held.
    text = redactor(_STAMP.sub("", text))
    if len(text) > limit:
        text, cut = text[-limit:], True
    if cut:
        # The first line was cut somewhere inside: it could hold the end of a secret that
        # its beginning, left out, would have let the redactor recognise.
        newline = text.find("\n")
        text = text[newline + 1 :] if 0 <= newline < PARTIAL_LINE else text[PARTIAL_LINE:]
    return text, cut
