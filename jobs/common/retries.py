"""When to retry a GitHub API call, and for how long at most.

githubkit's default honours a primary rate limit by sleeping until the hourly reset, which would
hold a worker (and the session's container slot) for up to an hour. Here every wait is bounded:
server errors and short rate-limit waits are retried with backoff that honours `retry-after`;
a limit that would take longer fails the call at once with a clear error.
"""

from __future__ import annotations

from datetime import timedelta

from githubkit.exception import GitHubException, RateLimitExceeded, RequestFailed
from githubkit.typing import RetryOption

MAX_ATTEMPTS = 3
MAX_WAIT = timedelta(seconds=90)
# GitHub's advice for a secondary limit without `retry-after`: wait at least a minute.
DEFAULT_RATE_WAIT = timedelta(seconds=60)


def bounded_retry(exc: GitHubException, retry_count: int) -> RetryOption:
    if retry_count >= MAX_ATTEMPTS:
        return RetryOption(False)
    if isinstance(exc, RateLimitExceeded):
        wait = exc.retry_after or DEFAULT_RATE_WAIT
        return RetryOption(wait <= MAX_WAIT, max(wait, timedelta(seconds=1)))
    if isinstance(exc, RequestFailed) and exc.response.status_code >= 500:
        return RetryOption(True, timedelta(seconds=2**retry_count))
    return RetryOption(False)
