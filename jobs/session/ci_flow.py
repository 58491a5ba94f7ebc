"""`/claude fix ci` (or a `fix-ci` label) on a pull request: its failing checks, then a fix.

The head's failing check runs and the tails of their job logs are read with a read-only token
of their own (`checks` and `actions` read), revoked as soon as they are read: the session's
token, which pushes, never holds them. With nothing failing the session says so and ends, no
sandbox started. Otherwise the failures become material of a pull request's session, which
pushes to its head, or, for a fork, goes back as the fork rules say (jobs/session/fork_flow.py).
"""

from __future__ import annotations

import contextlib

from githubkit.exception import GitHubException

from jobs.github.ci import CiReport, read_ci
from jobs.github.client import CI_READ_PERMISSIONS, RepoSession
from jobs.session.fork_flow import implement_fork_pull
from jobs.session.prompt import fix_ci_prompt
from jobs.session.pull_flow import implement_pull
from jobs.session.state import Session


def fix_ci(session: Session) -> dict:
    head = session.request.head_sha or session.pull["head"]["sha"]
    request, settings = session.request, session.settings
    reader = RepoSession(settings, request.installation_id, request.repo, CI_READ_PERMISSIONS)
    try:
        if not reader.holds("checks", "read"):
            session.tracking.answered(
                "⚠️ **`fix ci` cannot read this pull request's checks, so nothing ran.**",
                "The App's installation has not granted `checks: read` and `actions: read` "
                "yet: its owner can accept the new permissions in the installation's settings.",
            )
            return {"status": "no_permission"}
        report = read_ci(reader, head, settings.github_app_id)
    finally:
        with contextlib.suppress(GitHubException):
            reader.revoke()
    if not report.failures:
        session.tracking.answered(nothing_failing(report), "")
        return {"status": "nothing_failing", "pending": len(report.pending)}
    prompt = fix_ci_prompt(session, report)
    flow = implement_fork_pull if session.from_fork else implement_pull
    return flow(session, prompt)


def nothing_failing(report: CiReport) -> str:
    short = report.sha[:12]
    if report.pending:
        still = len(report.pending)
        return (
            f"ℹ️ **No check has failed on `{short}` yet, so nothing ran:** {still} "
            f"{'is' if still == 1 else 'are'} still running. Ask again once one fails."
        )
    if report.passed:
        return f"✅ **No check is failing on `{short}`, so nothing ran.**"
    return f"ℹ️ **`{short}` has no checks, so there is nothing to fix and nothing ran.**"
