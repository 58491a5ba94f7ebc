"""Check runs of the GitHub stand-in: create, update, read one, list a commit's.

``ChecksMixin`` is part of ``GitHubStandIn`` (``tests/standins/github.py``). It validates what
GitHub's Checks API validates (``name`` and ``head_sha`` required, a commit that exists, the
status and conclusion enums, a conclusion with ``completed``, at most three actions with
GitHub's label, identifier and description lengths, an output's title and summary), needs
``checks`` on the installation token (read to read, write to write), and keeps every state a
check run went through (``CheckRunRecord.history``) so a test can assert the order.

A test "clicks" like a person on GitHub: ``press(check_run_id, identifier)`` checks that the
run shows that button, ``rerequestable(check_run_id)`` that it shows Re-run; the webhook payload
is then built from GitHub's own examples (``tests/support.py`` ``check_run_payload``).
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from werkzeug.wrappers import Request

from . import github_git as gitops
from .github_objects import ApiError, Objects, PullRequest, Repo, Token, iso, node_id, now

Handled = tuple[int, Any, dict[str, str]]

CHECK_ROUTES: dict[tuple[str, str], tuple[str, str]] = {
    ("POST", "/repos/{owner}/{repo}/check-runs"): (
        "create_check_run",
        "checks/runs#create-a-check-run",
    ),
    ("GET", "/repos/{owner}/{repo}/check-runs/{check_run_id}"): (
        "get_check_run",
        "checks/runs#get-a-check-run",
    ),
    ("PATCH", "/repos/{owner}/{repo}/check-runs/{check_run_id}"): (
        "update_check_run",
        "checks/runs#update-a-check-run",
    ),
    ("GET", "/repos/{owner}/{repo}/commits/{ref}/check-runs"): (
        "list_check_runs_for_ref",
        "checks/runs#list-check-runs-for-a-git-reference",
    ),
}

STATUSES = ("queued", "in_progress", "completed")
CONCLUSIONS = (
    "action_required",
    "cancelled",
    "failure",
    "neutral",
    "success",
    "skipped",
    "stale",
    "timed_out",
)
MAX_ACTIONS = 3
ACTION_LIMITS = {"label": 20, "identifier": 20, "description": 40}
MAX_OUTPUT_TEXT = 65535
SHA = re.compile(r"[0-9a-f]{40}")
_CHECK_RUN_IDS = itertools.count(5_100_000_001)
_CHECK_SUITE_IDS = itertools.count(4_300_000_001)


@dataclass(frozen=True)
class CheckRunState:
    """One state a check run was in: what it showed after a create or an update."""

    status: str
    conclusion: str | None
    title: str | None
    summary: str | None
    actions: tuple[str, ...]  # the buttons' identifiers


@dataclass
class CheckRunRecord:
    id: int
    repo: Repo
    head_sha: str
    name: str
    status: str
    conclusion: str | None
    external_id: str | None
    details_url: str | None
    started_at: datetime | None
    completed_at: datetime | None
    output: dict[str, str | None]
    actions: list[dict[str, str]]
    check_suite_id: int
    history: list[CheckRunState] = field(default_factory=list)
    app: dict[str, Any] | None = None  # another App's run (GitHub Actions'); None: ours

    def snapshot(self) -> None:
        self.history.append(
            CheckRunState(
                self.status,
                self.conclusion,
                self.output.get("title"),
                self.output.get("summary"),
                tuple(a["identifier"] for a in self.actions),
            )
        )


def _invalid(detail: str) -> ApiError:
    return ApiError(422, f"Invalid request.\n\n{detail}")


def _string(payload: dict[str, Any], name: str, required: bool = False) -> str | None:
    value = payload.get(name)
    if value is None:
        if required:
            raise _invalid(f'"{name}" wasn\'t supplied.')
        return None
    if not isinstance(value, str):
        raise _invalid(f"For 'properties/{name}', {json.dumps(value)} is not a string.")
    return value


def _enum(payload: dict[str, Any], name: str, allowed: tuple[str, ...]) -> str | None:
    value = _string(payload, name)
    if value is not None and value not in allowed:
        raise _invalid(f"For 'properties/{name}', {json.dumps(value)} is not one of {allowed}.")
    return value


def _timestamp(payload: dict[str, Any], name: str) -> datetime | None:
    value = _string(payload, name)
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        detail = f"For 'properties/{name}', {json.dumps(value)} is not a date-time."
        raise _invalid(detail) from None


def _actions(payload: dict[str, Any]) -> list[dict[str, str]] | None:
    actions = payload.get("actions")
    if actions is None:
        return None
    if not isinstance(actions, list):
        raise _invalid(f"For 'properties/actions', {json.dumps(actions)} is not an array.")
    if len(actions) > MAX_ACTIONS:
        raise _invalid(f"For 'properties/actions', the array has more than {MAX_ACTIONS} items.")
    checked = []
    for action in actions:
        if not isinstance(action, dict):
            raise _invalid(f"For 'items', {json.dumps(action)} is not an object.")
        for key, limit in ACTION_LIMITS.items():
            value = _string(action, key, required=True)
            assert value is not None
            if len(value) > limit:
                raise _invalid(
                    f"For 'properties/{key}', {json.dumps(value)} is longer than {limit} "
                    "characters."
                )
        checked.append({key: action[key] for key in ACTION_LIMITS})
    return checked


def _output(payload: dict[str, Any]) -> dict[str, str | None] | None:
    output = payload.get("output")
    if output is None:
        return None
    if not isinstance(output, dict):
        raise _invalid(f"For 'properties/output', {json.dumps(output)} is not an object.")
    title = _string(output, "title", required=True)
    summary = _string(output, "summary", required=True)
    text = _string(output, "text")
    for name, value in (("summary", summary), ("text", text)):
        if value is not None and len(value) > MAX_OUTPUT_TEXT:
            raise _invalid(
                f"For 'properties/{name}', the string is longer than {MAX_OUTPUT_TEXT} characters."
            )
    return {"title": title, "summary": summary, "text": text}


class ChecksMixin:
    """Check runs for ``GitHubStandIn``; the attributes below are the stand-in's."""

    _lock: threading.RLock
    _repos: dict[str, Repo]
    _pulls: dict[tuple[str, int], PullRequest]
    _check_runs: dict[int, CheckRunRecord]
    _git_env: dict[str, str]
    _installations: dict[int, Any]
    api_url: str
    url: str
    objects: Objects

    # the stand-in's helpers (github.py, github_pulls.py)
    _need_token: Any
    _scoped_repo: Any
    _need_permission: Any
    _page: Any
    _head_sha: Any

    # ------------------------------------------------------------------ test API

    @property
    def check_runs(self) -> list[CheckRunRecord]:
        """Every check run, oldest first (copies: later updates do not show)."""
        with self._lock:
            return copy.deepcopy(sorted(self._check_runs.values(), key=lambda r: r.id))

    def check_runs_of(self, full_name: str) -> list[CheckRunRecord]:
        """The repository's check runs, oldest first (copies)."""
        return [r for r in self.check_runs if r.repo.full_name == full_name]

    def check_run_json(self, check_run_id: int) -> dict[str, Any]:
        """The check run as GitHub puts it in a ``check_run`` webhook."""
        with self._lock:
            return self._check_run_json(self._check_runs[check_run_id])

    def press(self, check_run_id: int, identifier: str) -> dict[str, Any]:
        """A person clicks a requested action: it must be one of the run's buttons now."""
        with self._lock:
            run = self._check_runs[check_run_id]
            shown = [a for a in run.actions if a["identifier"] == identifier]
            if not shown:
                raise AssertionError(f"check run {check_run_id} shows no {identifier!r} button")
            return {"identifier": identifier}

    def rerequestable(self, check_run_id: int) -> None:
        """GitHub shows Re-run on a completed check run only."""
        with self._lock:
            if self._check_runs[check_run_id].status != "completed":
                raise AssertionError(f"check run {check_run_id} is not completed: no Re-run")

    # ------------------------------------------------------------------ JSON

    def _check_run_json(self, run: CheckRunRecord) -> dict[str, Any]:
        repo_api = f"{self.api_url}/repos/{run.repo.full_name}"
        pulls = [
            pr
            for pr in self._pulls.values()
            if pr.repo is run.repo
            and pr.state == "open"
            and pr.head_repository is run.repo  # GitHub leaves fork pull requests out
            and self._head_sha(pr) == run.head_sha
        ]
        return {
            "id": run.id,
            "node_id": node_id("CR", run.id),
            "head_sha": run.head_sha,
            "external_id": run.external_id or "",
            "url": f"{repo_api}/check-runs/{run.id}",
            "html_url": f"{self.url}/{run.repo.full_name}/runs/{run.id}",
            "details_url": run.details_url or self.objects.app["external_url"],
            "status": run.status,
            "conclusion": run.conclusion,
            "started_at": iso(run.started_at),
            "completed_at": iso(run.completed_at),
            "output": {
                **run.output,
                "annotations_count": 0,
                "annotations_url": f"{repo_api}/check-runs/{run.id}/annotations",
            },
            "name": run.name,
            "check_suite": {"id": run.check_suite_id},
            "app": run.app or self.objects.integration(len(self._installations)),
            "pull_requests": [self._minimal_pull(pr) for pr in pulls],
        }

    def _minimal_pull(self, pr: PullRequest) -> dict[str, Any]:
        def end(ref: str, sha: str, repo: Repo) -> dict[str, Any]:
            repo_ref = {"id": repo.id, "url": f"{self.api_url}/repos/{repo.full_name}"}
            return {"ref": ref, "sha": sha, "repo": {**repo_ref, "name": repo.name}}

        base_sha = gitops.rev_parse(pr.repo.path, pr.base_ref, self._git_env) or ""
        return {
            "id": pr.id,
            "number": pr.number,
            "url": f"{self.api_url}/repos/{pr.full_name}/pulls/{pr.number}",
            "head": end(pr.head_ref, self._head_sha(pr), pr.head_repository),
            "base": end(pr.base_ref, base_sha, pr.repo),
        }

    # ------------------------------------------------------------------ REST

    def _checks_repo(
        self, auth: str | None, credential: Any, owner: str, repo: str, level: str
    ) -> Repo:
        token: Token = self._need_token(auth, credential)
        found = self._scoped_repo(token, owner, repo)
        self._need_permission(token, ("checks", level))
        return found

    def _apply(self, run: CheckRunRecord, payload: dict[str, Any]) -> None:
        """The fields a create or an update sets, checked first, then written together."""
        name = _string(payload, "name")
        if name is not None and not name.strip():
            raise _invalid('"name" wasn\'t supplied.')
        status = _enum(payload, "status", STATUSES)
        conclusion = _enum(payload, "conclusion", CONCLUSIONS)
        if conclusion == "stale":
            raise _invalid("Only GitHub can set a check run's conclusion to stale.")
        started, completed = _timestamp(payload, "started_at"), _timestamp(payload, "completed_at")
        if (status == "completed" or completed is not None) and conclusion is None:
            raise _invalid('"conclusion" wasn\'t supplied.')
        actions, output = _actions(payload), _output(payload)
        details_url, external_id = _string(payload, "details_url"), _string(payload, "external_id")
        # Providing a conclusion completes the run, whatever status was sent.
        if conclusion is not None:
            run.status, run.conclusion = "completed", conclusion
            run.completed_at = completed or now()
        elif status is not None:
            run.status, run.conclusion, run.completed_at = status, None, None
        run.name = name if name is not None else run.name
        run.started_at = started or run.started_at
        run.details_url = details_url if details_url is not None else run.details_url
        run.external_id = external_id if external_id is not None else run.external_id
        run.output = output if output is not None else run.output
        run.actions = actions if actions is not None else run.actions

    def _h_create_check_run(
        self, *, auth: str | None, credential: Any, payload: Any, owner: str, repo: str, **_: Any
    ) -> Handled:
        found = self._checks_repo(auth, credential, owner, repo, "write")
        if not isinstance(payload, dict):
            raise _invalid("Request body must be an object.")
        _string(payload, "name", required=True)
        head_sha = _string(payload, "head_sha", required=True) or ""
        if not SHA.fullmatch(head_sha) or gitops.rev_parse(found.path, head_sha, self._git_env) != (
            head_sha
        ):
            raise ApiError(422, f"No commit found for SHA: {head_sha}")
        run = CheckRunRecord(
            id=next(_CHECK_RUN_IDS),
            repo=found,
            head_sha=head_sha,
            name="",
            status="queued",
            conclusion=None,
            external_id=None,
            details_url=None,
            started_at=now(),
            completed_at=None,
            output={"title": None, "summary": None, "text": None},
            actions=[],
            check_suite_id=next(_CHECK_SUITE_IDS),
        )
        self._apply(run, payload)
        run.snapshot()
        self._check_runs[run.id] = run
        return 201, self._check_run_json(run), {}

    def _scoped_check_run(self, found: Repo, check_run_id: int) -> CheckRunRecord:
        run = self._check_runs.get(check_run_id)
        if run is None or run.repo is not found:
            raise ApiError(404, "Not Found")
        return run

    def _h_get_check_run(
        self,
        *,
        auth: str | None,
        credential: Any,
        owner: str,
        repo: str,
        check_run_id: int,
        **_: Any,
    ) -> Handled:
        found = self._checks_repo(auth, credential, owner, repo, "read")
        return 200, self._check_run_json(self._scoped_check_run(found, check_run_id)), {}

    def _h_update_check_run(
        self,
        *,
        auth: str | None,
        credential: Any,
        payload: Any,
        owner: str,
        repo: str,
        check_run_id: int,
        **_: Any,
    ) -> Handled:
        found = self._checks_repo(auth, credential, owner, repo, "write")
        run = self._scoped_check_run(found, check_run_id)
        if not isinstance(payload, dict):
            raise _invalid("Request body must be an object.")
        updated = copy.copy(run)
        self._apply(updated, payload)  # raises before anything changed
        run.__dict__.update(updated.__dict__)
        run.snapshot()
        return 200, self._check_run_json(run), {}

    def _h_list_check_runs_for_ref(
        self,
        *,
        auth: str | None,
        credential: Any,
        request: Request,
        owner: str,
        repo: str,
        ref: str,
        **_: Any,
    ) -> Handled:
        found = self._checks_repo(auth, credential, owner, repo, "read")
        sha = None if ref.startswith("-") else gitops.rev_parse(found.path, ref, self._git_env)
        if sha is None:
            raise ApiError(422, f"No commit found for SHA: {ref}")
        runs = [r for r in self._check_runs.values() if r.repo is found and r.head_sha == sha]
        runs.sort(key=lambda r: r.id, reverse=True)
        if name := request.args.get("check_name"):
            runs = [r for r in runs if r.name == name]
        if status := request.args.get("status"):
            runs = [r for r in runs if r.status == status]
        if request.args.get("filter", "latest") == "latest":
            newest: dict[str, CheckRunRecord] = {}
            for run in runs:
                newest.setdefault(run.name, run)
            runs = list(newest.values())
        url = f"{self.api_url}/repos/{found.full_name}/commits/{ref}/check-runs"
        chunk, links = self._page(request, runs, url)
        body = {"total_count": len(runs), "check_runs": [self._check_run_json(r) for r in chunk]}
        return 200, body, links
