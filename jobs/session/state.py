"""What one session works with: a `Session`, built once per job and handed to every step.

The pipeline builds it from the queued request (jobs/session/pipeline.py), loads the repository
and its `.github/claude.yml` into it, and passes it down to the gate, the flows and the agent
run; none of them climbs back up for a value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from redis import Redis

from jobs.common.request import Mode, SessionRequest
from jobs.common.settings import WorkerSettings
from jobs.github.checks import CheckRun
from jobs.github.client import BotIdentity, RepoSession, bot_identity
from jobs.github.tracking import TrackingComment
from jobs.sandbox.container import Limits
from jobs.sandbox.host import worker_host
from jobs.sandbox.mirror import MirrorKey, RepoCache
from jobs.sandbox.pool import claim
from jobs.sandbox.workspace import CachedRepo, Owner, Workspace
from jobs.session.repo_config import RepoConfig, load_repo_config


@dataclass(eq=False)
class Session:
    id: str
    request: SessionRequest
    settings: WorkerSettings
    redis: Redis
    github: RepoSession
    tracking: TrackingComment
    check: CheckRun  # on its pull request; the pipeline queues and starts it, `tracking` ends it
    # Known once `load_repository` has run: the pipeline's first step.
    repository: dict = field(init=False, repr=False)
    config: RepoConfig = field(init=False, repr=False)
    mode: Mode = field(init=False)

    def load_repository(self) -> None:
        """The repository and its config on the default branch; RepoConfigError if invalid."""
        self.repository = self.github.repository()
        self.config = load_repo_config(self.github, self.repository["default_branch"])

    @property
    def default_branch(self) -> str:
        return self.repository["default_branch"]

    @property
    def limits(self) -> Limits:
        """The service's limits, narrowed (never widened) by the repository's config."""
        settings, config = self.settings, self.config
        return Limits(
            timeout=min(settings.session_timeout, config.timeout_minutes * 60),
            max_turns=min(settings.max_turns, config.max_turns),
            model=config.model or settings.model,
            max_budget_usd=config.max_budget_usd,
            append_system_prompt=config.instructions,
        )

    @cached_property
    def bot(self) -> BotIdentity:
        """Who commits: the App's bot account, looked up once per App (cached in Redis)."""
        return bot_identity(self.settings, self.github, self.redis)

    @cached_property
    def pull(self) -> dict:
        """The pull request the session is on, as GitHub has it once the thread is held."""
        return self.github.pull(self.request.number)

    @property
    def head_repo(self) -> dict:
        return (self.pull.get("head") or {}).get("repo") or {}

    @property
    def from_fork(self) -> bool:
        """A pull request whose head lives in another repository, which this App cannot push."""
        return self.head_repo.get("full_name") != self.repository["full_name"]

    def clone(self, ref: str) -> Workspace:
        return Workspace.clone(
            self.settings.workspace_root,
            self.repository["clone_url"],
            ref,
            self.github.token,
            Owner(
                self.id,
                worker_host(self.settings),
                # A warm sandbox, when this host has one ready: its directories become the
                # workspace.
                claim(self.settings, self.id),
            ),
            self.cached_repo,
        )

    @property
    def cached_repo(self) -> CachedRepo | None:
        """The repository's mirror in this worker's cache, keyed by installation and repository
        ids; None when the cache is off."""
        settings = self.settings
        if not settings.repo_cache:
            return None
        cache = RepoCache(
            settings.repo_cache_dir,
            int(settings.repo_cache_max_gb * 2**30),
            settings.repo_cache_lock_timeout,
        )
        return CachedRepo(cache, MirrorKey(self.request.installation_id, self.repository["id"]))
