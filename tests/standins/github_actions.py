"""GitHub Actions on the GitHub stand-in: workflow runs, their jobs, and job logs.

``ActionsMixin`` is part of ``GitHubStandIn`` (``tests/standins/github.py``). A test seeds what
a workflow did on a commit with ``add_workflow_run(full_name, head_sha, jobs=[NewJob(…)])``: a
run, its jobs and, for each job, the check run GitHub Actions shows for it (app
``github-actions``, in ``ChecksMixin``'s check runs, named as the job), as GitHub does.

The REST side needs ``actions`` (read) on the installation token, as GitHub's does. A job's log
is served as GitHub serves it: ``GET …/actions/jobs/{job_id}/logs`` answers 302 with a
``Location`` on another path (a signed, expiring URL like ``pipelines.actions.githubusercontent
.com``'s), where the plain text is downloaded with no credentials. That download refuses a
request carrying an ``Authorization`` header (as a signed blob URL does), and every download is
recorded in ``log_downloads`` with whether one was sent: a test asserts the token never follows
the redirect.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from werkzeug.wrappers import Request, Response

from . import github_git as gitops
from .github_checks import _CHECK_RUN_IDS, _CHECK_SUITE_IDS, CheckRunRecord
from .github_objects import ApiError, Objects, Repo, Token, iso, node_id, now

Handled = tuple[int, Any, dict[str, str]]

ACTIONS_ROUTES: dict[tuple[str, str], tuple[str, str]] = {
    ("GET", "/repos/{owner}/{repo}/actions/runs"): (
        "list_workflow_runs",
        "actions/workflow-runs#list-workflow-runs-for-a-repository",
    ),
    ("GET", "/repos/{owner}/{repo}/actions/runs/{run_id}/jobs"): (
        "list_jobs_for_workflow_run",
        "actions/workflow-jobs#list-jobs-for-a-workflow-run",
    ),
    ("GET", "/repos/{owner}/{repo}/actions/jobs/{job_id}"): (
        "get_job",
        "actions/workflow-jobs#get-a-job-for-a-workflow-run",
    ),
    ("GET", "/repos/{owner}/{repo}/actions/jobs/{job_id}/logs"): (
        "download_job_logs",
        "actions/workflow-jobs#download-job-logs-for-a-workflow-run",
    ),
}

ACTIONS_APP_ID = 15368  # GitHub Actions' App on github.com
LOG_PATH = "/_services/pipelines/logs/"
LINK_LIFETIME = 60  # seconds, as GitHub's "This link expires after 1 minute"
_RUN_IDS = itertools.count(7_700_000_001)
CONCLUSIONS = ("success", "failure", "neutral", "cancelled", "skipped", "timed_out")


@dataclass(frozen=True)
class NewJob:
    """A job as a test seeds it: its steps' (name, conclusion) and the log it wrote.
    `conclusion=None` is a job still running (no log yet)."""

    name: str
    conclusion: str | None = "failure"
    steps: tuple[tuple[str, str | None], ...] = (
        ("Set up job", "success"),
        ("Run tests", "failure"),
    )
    log: str = ""


@dataclass
class JobRecord:
    id: int
    run_id: int
    name: str
    conclusion: str | None
    steps: tuple[tuple[str, str | None], ...]
    log: str
    started_at: datetime = field(default_factory=now)

    @property
    def status(self) -> str:
        return "in_progress" if self.conclusion is None else "completed"


@dataclass
class WorkflowRunRecord:
    id: int
    repo: Repo
    head_sha: str
    head_branch: str
    name: str
    path: str
    event: str
    run_number: int
    check_suite_id: int
    jobs: list[JobRecord]
    created_at: datetime = field(default_factory=now)

    @property
    def status(self) -> str:
        return "completed" if all(j.conclusion for j in self.jobs) else "in_progress"

    @property
    def conclusion(self) -> str | None:
        if self.status != "completed":
            return None
        failed = [j.conclusion for j in self.jobs if j.conclusion not in ("success", "skipped")]
        return failed[0] if failed else "success"


@dataclass(frozen=True)
class LogDownload:
    """One request for a log's download URL: what was asked and whether it carried a token."""

    path: str
    status: int
    authorization: str | None  # the header's value, if the client sent one


class ActionsMixin:
    """Workflow runs, jobs and logs for ``GitHubStandIn``; the attributes below are its."""

    _lock: threading.RLock
    _check_runs: dict[int, CheckRunRecord]
    _git_env: dict[str, str]
    api_url: str
    url: str
    objects: Objects

    # the stand-in's helpers (github.py)
    _need_token: Any
    _scoped_repo: Any
    _need_permission: Any
    _page: Any
    repo: Any
    add_user: Any

    def _init_actions(self) -> None:
        self._workflow_runs: dict[int, WorkflowRunRecord] = {}
        self._log_key = secrets.token_bytes(32)
        self.log_downloads: list[LogDownload] = []

    # ------------------------------------------------------------------ test API

    def add_workflow_run(
        self,
        full_name: str,
        head_sha: str,
        jobs: list[NewJob],
        *,
        name: str = "CI",
        head_branch: str = "",
        event: str = "pull_request",
    ) -> WorkflowRunRecord:
        """What a workflow did on `head_sha`: its run, jobs and their check runs."""
        with self._lock:
            repo = self.repo(full_name)
            if gitops.rev_parse(repo.path, head_sha, self._git_env) != head_sha:
                raise ValueError(f"no commit {head_sha} in {full_name}")
            for job in jobs:
                if job.conclusion is not None and job.conclusion not in CONCLUSIONS:
                    raise ValueError(f"unknown conclusion {job.conclusion!r}")
            run_id = next(_RUN_IDS)
            number = 1 + sum(1 for r in self._workflow_runs.values() if r.repo is repo)
            records = [
                JobRecord(next(_CHECK_RUN_IDS), run_id, j.name, j.conclusion, j.steps, j.log)
                for j in jobs
            ]
            run = WorkflowRunRecord(
                run_id,
                repo,
                head_sha,
                head_branch,
                name,
                f".github/workflows/{name.lower()}.yml",
                event,
                number,
                next(_CHECK_SUITE_IDS),
                records,
            )
            self._workflow_runs[run_id] = run
            for job in records:
                self._check_runs[job.id] = self._job_check_run(run, job)
            return run

    def _job_check_run(self, run: WorkflowRunRecord, job: JobRecord) -> CheckRunRecord:
        done = job.conclusion is not None
        summary = "Process completed with exit code 1." if job.conclusion == "failure" else ""
        record = CheckRunRecord(
            id=job.id,
            repo=run.repo,
            head_sha=run.head_sha,
            name=job.name,
            status=job.status,
            conclusion=job.conclusion,
            external_id=secrets.token_hex(16),
            details_url=f"{self.url}/{run.repo.full_name}/actions/runs/{run.id}/job/{job.id}",
            started_at=job.started_at,
            completed_at=now() if done else None,
            output={"title": None, "summary": summary or None, "text": None},
            actions=[],
            check_suite_id=run.check_suite_id,
            app=self._actions_app(),
        )
        record.snapshot()
        return record

    def _actions_app(self) -> dict[str, Any]:
        owner = self.add_user("github", type="Organization")
        base = self.objects.integration(1)
        return {
            **base,
            "id": ACTIONS_APP_ID,
            "client_id": "Iv1.05c79e9ad1f6bdfa",
            "slug": "github-actions",
            "node_id": node_id("A", ACTIONS_APP_ID),
            "owner": self.objects.simple_user(owner),
            "name": "GitHub Actions",
            "description": "Automate your workflow from idea to production",
            "external_url": "https://help.github.com/en/actions",
            "html_url": f"{self.url}/apps/github-actions",
            "permissions": {"actions": "write", "checks": "write", "metadata": "read"},
            "events": ["check_run", "pull_request", "push"],
        }

    # ------------------------------------------------------------------ JSON

    def _run_json(self, run: WorkflowRunRecord) -> dict[str, Any]:
        api = f"{self.api_url}/repos/{run.repo.full_name}"
        repo = self.objects.repository(run.repo)
        return {
            "id": run.id,
            "name": run.name,
            "node_id": node_id("WFR", run.id),
            "check_suite_id": run.check_suite_id,
            "check_suite_node_id": node_id("CS", run.check_suite_id),
            "head_branch": run.head_branch or None,
            "head_sha": run.head_sha,
            "path": run.path,
            "run_number": run.run_number,
            "run_attempt": 1,
            "referenced_workflows": [],
            "event": run.event,
            "status": run.status,
            "conclusion": run.conclusion,
            "workflow_id": 161335,
            "url": f"{api}/actions/runs/{run.id}",
            "html_url": f"{self.url}/{run.repo.full_name}/actions/runs/{run.id}",
            "pull_requests": [],
            "created_at": iso(run.created_at),
            "updated_at": iso(run.created_at),
            "run_started_at": iso(run.created_at),
            "jobs_url": f"{api}/actions/runs/{run.id}/jobs",
            "logs_url": f"{api}/actions/runs/{run.id}/logs",
            "check_suite_url": f"{api}/check-suites/{run.check_suite_id}",
            "artifacts_url": f"{api}/actions/runs/{run.id}/artifacts",
            "cancel_url": f"{api}/actions/runs/{run.id}/cancel",
            "rerun_url": f"{api}/actions/runs/{run.id}/rerun",
            "previous_attempt_url": None,
            "workflow_url": f"{api}/actions/workflows/161335",
            "head_commit": None,
            "repository": repo,
            "head_repository": repo,
            "display_title": run.name,
        }

    def _job_json(self, run: WorkflowRunRecord, job: JobRecord) -> dict[str, Any]:
        api = f"{self.api_url}/repos/{run.repo.full_name}"
        started = iso(job.started_at)
        done = iso(now()) if job.conclusion else None
        return {
            "id": job.id,
            "run_id": run.id,
            "run_url": f"{api}/actions/runs/{run.id}",
            "run_attempt": 1,
            "node_id": node_id("CR", job.id),
            "head_sha": run.head_sha,
            "url": f"{api}/actions/jobs/{job.id}",
            "html_url": f"{self.url}/{run.repo.full_name}/actions/runs/{run.id}/job/{job.id}",
            "status": job.status,
            "conclusion": job.conclusion,
            "created_at": started,
            "started_at": started,
            "completed_at": done,
            "name": job.name,
            "steps": [
                {
                    "name": step,
                    "status": "completed" if conclusion else "in_progress",
                    "conclusion": conclusion,
                    "number": number,
                    "started_at": started,
                    "completed_at": done if conclusion else None,
                }
                for number, (step, conclusion) in enumerate(job.steps, start=1)
            ],
            "check_run_url": f"{api}/check-runs/{job.id}",
            "labels": ["ubuntu-latest"],
            "runner_id": 1,
            "runner_name": "GitHub Actions 1",
            "runner_group_id": 2,
            "runner_group_name": "GitHub Actions",
            "workflow_name": run.name,
            "head_branch": run.head_branch or None,
        }

    # ------------------------------------------------------------------ REST

    def _actions_repo(self, auth: str | None, credential: Any, owner: str, repo: str) -> Repo:
        token: Token = self._need_token(auth, credential)
        found = self._scoped_repo(token, owner, repo)
        self._need_permission(token, ("actions", "read"))
        return found

    def _scoped_job(self, found: Repo, job_id: int) -> tuple[WorkflowRunRecord, JobRecord]:
        for run in self._workflow_runs.values():
            if run.repo is found:
                for job in run.jobs:
                    if job.id == job_id:
                        return run, job
        raise ApiError(404, "Not Found")

    def _h_list_workflow_runs(
        self,
        *,
        auth: str | None,
        credential: Any,
        request: Request,
        owner: str,
        repo: str,
        **_: Any,
    ) -> Handled:
        found = self._actions_repo(auth, credential, owner, repo)
        runs = [r for r in self._workflow_runs.values() if r.repo is found]
        runs.sort(key=lambda r: r.id, reverse=True)
        for name, of in (("head_sha", "head_sha"), ("branch", "head_branch"), ("event", "event")):
            if wanted := request.args.get(name):
                runs = [r for r in runs if getattr(r, of) == wanted]
        if status := request.args.get("status"):
            runs = [r for r in runs if status in (r.status, r.conclusion)]
        url = f"{self.api_url}/repos/{found.full_name}/actions/runs"
        chunk, links = self._page(request, runs, url)
        body = {"total_count": len(runs), "workflow_runs": [self._run_json(r) for r in chunk]}
        return 200, body, links

    def _h_list_jobs_for_workflow_run(
        self,
        *,
        auth: str | None,
        credential: Any,
        request: Request,
        owner: str,
        repo: str,
        run_id: int,
        **_: Any,
    ) -> Handled:
        found = self._actions_repo(auth, credential, owner, repo)
        run = self._workflow_runs.get(run_id)
        if run is None or run.repo is not found:
            raise ApiError(404, "Not Found")
        if request.args.get("filter", "latest") not in ("latest", "all"):
            raise ApiError(422, "Invalid request.\n\nFor 'filter', it must be latest or all.")
        url = f"{self.api_url}/repos/{found.full_name}/actions/runs/{run.id}/jobs"
        chunk, links = self._page(request, run.jobs, url)
        body = {"total_count": len(run.jobs), "jobs": [self._job_json(run, j) for j in chunk]}
        return 200, body, links

    def _h_get_job(
        self, *, auth: str | None, credential: Any, owner: str, repo: str, job_id: int, **_: Any
    ) -> Handled:
        found = self._actions_repo(auth, credential, owner, repo)
        run, job = self._scoped_job(found, job_id)
        return 200, self._job_json(run, job), {}

    def _h_download_job_logs(
        self, *, auth: str | None, credential: Any, owner: str, repo: str, job_id: int, **_: Any
    ) -> Handled:
        found = self._actions_repo(auth, credential, owner, repo)
        _, job = self._scoped_job(found, job_id)
        if job.conclusion is None:
            raise ApiError(404, "Not Found")  # a running job's log is not downloadable yet
        return 302, None, {"Location": self.log_url(job.id)}

    # ------------------------------------------------------------------ the download

    def _signature(self, job_id: int, expires: str) -> str:
        message = f"{job_id}:{expires}".encode()
        return hmac.new(self._log_key, message, hashlib.sha256).hexdigest()

    def log_url(self, job_id: int) -> str:
        """A signed download URL for the job's log, valid for LINK_LIFETIME seconds."""
        expires = str(int(time.time()) + LINK_LIFETIME)
        query = urlencode(
            {
                "urlExpires": expires,
                "urlSigningMethod": "HMACV1",
                "urlSignature": self._signature(job_id, expires),
            }
        )
        return f"{self.url}{LOG_PATH}{job_id}/signedlogcontent?{query}"

    def _log_download(self, request: Request) -> Response | None:
        """The plain-text log behind a signed URL; None for any other path."""
        if not request.path.startswith(LOG_PATH):
            return None
        authorization = request.headers.get("Authorization")
        status, text = self._log_answer(request, authorization)
        with self._lock:
            self.log_downloads.append(LogDownload(request.path, status, authorization))
        return Response(text, status=status, content_type="text/plain; charset=utf-8")

    def _log_answer(self, request: Request, authorization: str | None) -> tuple[int, str]:
        job_part = request.path[len(LOG_PATH) :].removesuffix("/signedlogcontent")
        expires = request.args.get("urlExpires", "")
        signature = request.args.get("urlSignature", "")
        if authorization is not None:
            # A signed URL is its own credential; a blob store refuses a second one.
            return 400, "Authorization header is not allowed on a signed URL.\n"
        if not job_part.isdigit() or not hmac.compare_digest(
            signature, self._signature(int(job_part), expires)
        ):
            return 403, "Signature did not match.\n"
        if not expires.isdigit() or int(expires) < time.time():
            return 403, "The signed URL has expired.\n"
        with self._lock:
            for run in self._workflow_runs.values():
                for job in run.jobs:
                    if job.id == int(job_part):
                        return 200, job.log
        return 404, "Not found.\n"
