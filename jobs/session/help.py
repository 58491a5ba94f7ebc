# ruff: noqa: E501 - a markdown table reads best one row per line
"""`/claude help`: how to use the bot in this repository, from its own configuration."""

from __future__ import annotations

from jobs.common.settings import WorkerSettings
from jobs.session.repo_config import RepoConfig


def help_text(config: RepoConfig, settings: WorkerSettings) -> str:
    trigger = config.trigger
    labels = ", ".join(f"`{name}` → {mode}" for name, mode in config.labels.items()) or "none"
    turns = min(settings.max_turns, config.max_turns)
    minutes = min(settings.session_timeout // 60, config.timeout_minutes)
    return f"""\
| Command | What happens |
|---|---|
| `{trigger} <what to do>` on an issue | Claude makes the change and opens a pull request. |
| `{trigger} <what to do>` on a pull request | Claude pushes new commits to its branch (a fork's gets suggestions and a patch, or a follow-up pull request with `fork_pull_requests: follow_up`). |
| `{trigger} <what to do>` on a line of a pull request's diff | The same, focused on that line; the answer is threaded under your comment. |
| `{trigger} fresh <what to do>` | The same, but Claude starts over instead of continuing this thread's earlier conversation. |
| `{trigger} review [focus]` | Claude reviews the pull request and posts a review with inline comments; nothing is pushed. |
| `{trigger} fix ci [more]` on a pull request | Claude reads the failing checks of its head and their logs and pushes a fix (a fork's, as above). |
| `{trigger} stop` | Stops the session running on this issue or pull request; nothing is pushed. |
| `{trigger} help` | This message. |

**Labels:** {labels}{" (re-run on new commits)" if config.rerun_on_push else ""}.
**Who can ask:** collaborators with at least `{config.min_permission}` access.
**Limits:** {turns} turns, {minutes} minutes and ${config.max_budget_usd:g} per session.
Configure this in `.github/claude.yml` on the default branch."""
