"""Configuration from the environment, one settings class per role.

Each process (web, worker, gateway) declares only the variables it uses, and reads them from its
environment, the shared `.env` (no secrets) and its own env file, `deploy/env/<role>.env`. A
secret belongs to one role (SECRET_OWNERS): another role that finds it in its environment or its
files refuses to start, so a deployment that hands the worker the model key, or the
internet-facing web the App's private key, fails at once instead of holding it quietly.

pydantic-settings reads and type-checks the values (secrets as `SecretStr`, never printed);
`load()` turns what a role needs into one readable line per problem, because an operator starting
the service wants to know which variable to set, not to read a validation traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
from functools import cached_property
from pathlib import Path
from typing import Annotated, ClassVar, Literal, Self, TypeVar

from dotenv import dotenv_values
from pydantic import AfterValidator, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

WEB_REQUIRED = ("GITHUB_WEBHOOK_SECRET",)
WORKER_REQUIRED = ("GITHUB_APP_ID", "GITHUB_PRIVATE_KEY")
# The gateway needs one model backend, of any kind (jobs/gateway/backends.py): checked by
# GatewaySettings.require, since no one variable is required.
GATEWAY_REQUIRED = ("a model backend",)
ROLES = ("web", "worker", "gateway", "egress")
# Each secret and the one role that may hold it.
SECRET_OWNERS = {
    "GITHUB_WEBHOOK_SECRET": "web",
    "GITHUB_CLIENT_SECRET": "web",
    "GITHUB_PRIVATE_KEY": "worker",
    "GITHUB_PRIVATE_KEY_PATH": "worker",
    "ANTHROPIC_API_KEY": "gateway",
    "CLAUDE_CODE_OAUTH_TOKEN": "gateway",
    "ANTHROPIC_AUTH_TOKEN": "gateway",
    "AWS_ACCESS_KEY_ID": "gateway",
    "AWS_SECRET_ACCESS_KEY": "gateway",
    "AWS_SESSION_TOKEN": "gateway",
    "GOOGLE_APPLICATION_CREDENTIALS": "gateway",  # the path of a service-account key
}
# What the gateway needs set for each model backend, in the CLI's precedence.
MODEL_BACKEND_CHOICES = (
    "ANTHROPIC_API_KEY; CLAUDE_CODE_OAUTH_TOKEN (claude setup-token); ANTHROPIC_AUTH_TOKEN with "
    "ANTHROPIC_BASE_URL; CLAUDE_CODE_USE_BEDROCK=1 with AWS_REGION; or CLAUDE_CODE_USE_VERTEX=1 "
    "with CLOUD_ML_REGION and ANTHROPIC_VERTEX_PROJECT_ID"
)
# A process that cannot start for its configuration exits with this (after one line naming the
# variable): the run script and the tests tell it from a crash. gunicorn's web uses its own 3.
CONFIG_ERROR_EXIT = 2
ENV_DIR = Path(os.environ.get("CLAUDECLUSTER_ENV_DIR", "deploy/env"))


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError("must be an http(s) URL")
    return value.rstrip("/")


HttpUrl = Annotated[str, AfterValidator(_http_url)]  # kept as text, without a trailing slash


def env_file(role: str) -> Path:
    return ENV_DIR / f"{role}.env"


class ConfigError(Exception):
    """A required setting is missing or malformed; the message names the variable."""


class MissingSetting(ConfigError):
    """Only required settings are missing (none is malformed): what setup mode waits for."""


# `claudecluster serve` sets this for its processes: a role whose required settings are merely
# missing waits for them (the web serves /setup meanwhile) instead of exiting. Deployments that
# hand each process its secrets leave it unset and fail fast.
WAIT_FOR_CONFIG = "CLAUDECLUSTER_WAIT_FOR_CONFIG"


def waiting_for_config() -> bool:
    return os.environ.get(WAIT_FOR_CONFIG, "") == "1"


# A worker host's name, as WORKER_HOST_ID or derived from its Docker engine's.
HOST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")


class CommonSettings(BaseSettings):
    """What every role shares: where Redis and the workspaces are. Nothing secret."""

    # An empty value is an unset one: the env files' examples list every variable as `NAME=`.
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", case_sensitive=True, env_ignore_empty=True
    )
    ROLE: ClassVar[str] = ""
    REQUIRED: ClassVar[tuple[str, ...]] = ()

    redis_url: str = Field("redis://localhost:6379/0", alias="REDIS_URL")
    workspace_root: Path = Field(Path("/tmp/claudecluster"), alias="WORKSPACE_ROOT")
    # Where workers reach the gateway process; by default beside the workspaces they share.
    gateway_socket_path: Path | None = Field(None, alias="GATEWAY_SOCKET")
    # And the egress process (the registries proxy), likewise.
    egress_socket_path: Path | None = Field(None, alias="EGRESS_SOCKET")
    queue_name: str = Field("sessions", alias="QUEUE_NAME")
    session_timeout: int = Field(1800, alias="SESSION_TIMEOUT", gt=0)
    # Where people reach this service (a tunnel or public address): setup registers the webhook
    # under it, and the worker links the tracking comment and the pull request body to
    # $PUBLIC_URL/sessions/<id>. Unset, setup takes the address the browser used, and the
    # comments carry no dashboard link.
    public_url: HttpUrl | None = Field(None, alias="PUBLIC_URL")
    # Days a session's record and event stream are kept in Redis for the dashboard.
    session_history_days: float = Field(14, alias="SESSION_HISTORY_DAYS", gt=0)
    # "json": one JSON object per log line, with its delivery and session ids (jobs/common/logs).
    log_format: Literal["text", "json"] = Field("text", alias="LOG_FORMAT")

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @property
    def gateway_socket(self) -> Path:
        return self.gateway_socket_path or self.workspace_root / "gateway.ctl"

    @property
    def egress_socket(self) -> Path:
        return self.egress_socket_path or self.workspace_root / "egress.ctl"

    def secrets(self) -> list[str]:
        """This role's secret values, for the redactor."""
        return [
            value.get_secret_value()
            for value in self.__dict__.values()
            if isinstance(value, SecretStr) and value.get_secret_value()
        ]

    @classmethod
    def load(cls, *required: str) -> Self:
        """The role's settings as its process starts: no other role's secret where it reads
        them, and what `required` names (default: the role's own) set."""
        foreign = cls.foreign_secrets()
        if foreign:
            raise ConfigError("; ".join(foreign))
        return cls.parse().require(required or cls.REQUIRED)

    @classmethod
    def parse(cls, **overrides: object) -> Self:
        """Read and check the values; `overrides` (by variable name) win, for tests and
        embedding. Another role's variables are ignored, as in the environment: this class
        has no field to hold them."""
        files = (".env", str(env_file(cls.ROLE))) if cls.ROLE else (".env",)
        try:
            return cls(_env_file=files, **overrides)  # type: ignore[call-arg]
        except ValidationError as exc:
            problems = []
            for err in exc.errors():
                name = err["loc"][0] if err["loc"] else "?"
                problems.append(f"{name}: {err['msg']}")
            raise ConfigError("; ".join(problems)) from None

    @classmethod
    def foreign_secrets(cls) -> list[str]:
        """Another role's secret found where this role reads its settings, one line each."""
        found = []
        sources = {"the environment": dict(os.environ)}
        for path in (Path(".env"), env_file(cls.ROLE)):
            if cls.ROLE and path.is_file():
                sources[str(path)] = {k: v or "" for k, v in dotenv_values(path).items()}
        for where, values in sources.items():
            for name, owner in SECRET_OWNERS.items():
                if values.get(name) and owner != cls.ROLE:
                    found.append(
                        f"{name} is set in {where} of the {cls.ROLE}, but only the {owner} may "
                        f"hold it: move it to {env_file(owner)} (see README: Configuration)"
                    )
        return found

    def require(self, names: tuple[str, ...]) -> Self:
        missing, malformed = [], False
        for name in names:
            if name == "GITHUB_PRIVATE_KEY":
                try:
                    self.private_key  # noqa: B018 - loads and checks the key
                except ConfigError as exc:
                    missing.append(str(exc))
                    malformed = malformed or not str(exc).endswith("is not set")
                continue
            field = next(
                (f for f, info in type(self).model_fields.items() if info.alias == name), None
            )
            value = getattr(self, field) if field else None
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if value in (None, ""):
                missing.append(f"{name} is not set")
        if missing:
            raise (ConfigError if malformed else MissingSetting)("; ".join(missing))
        return self


S = TypeVar("S", bound=CommonSettings)


class WebSettings(CommonSettings):
    """The internet-facing web process: the webhook secret, and no key to anything."""

    ROLE: ClassVar[str] = "web"
    REQUIRED: ClassVar[tuple[str, ...]] = WEB_REQUIRED

    github_webhook_secret: SecretStr | None = Field(None, alias="GITHUB_WEBHOOK_SECRET")
    # The App's home, for setup: github.com or a GitHub Enterprise Server's base URL.
    github_url: HttpUrl = Field("https://github.com", alias="GITHUB_URL")
    github_api_url: HttpUrl | None = Field(None, alias="GITHUB_API_URL")
    # Written by setup: the App's page (its install link) and its OAuth client (sign-in).
    github_app_url: HttpUrl | None = Field(None, alias="GITHUB_APP_URL")
    github_client_id: str | None = Field(None, alias="GITHUB_CLIENT_ID")
    github_client_secret: SecretStr | None = Field(None, alias="GITHUB_CLIENT_SECRET")
    # GitHub logins that see every session on the dashboard (comma-separated).
    dashboard_admins: Annotated[list[str], NoDecode] = Field([], alias="DASHBOARD_ADMINS")

    @field_validator("dashboard_admins", mode="before")
    @classmethod
    def _logins(cls, value: object) -> object:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    # gunicorn.conf.py reads these, so the env files can set them too.
    host: str = Field("0.0.0.0", alias="HOST")
    port: int = Field(8000, alias="PORT", gt=0, lt=65536)
    web_concurrency: int = Field(2, alias="WEB_CONCURRENCY", gt=0)


class GatewaySettings(CommonSettings):
    """The model gateway process: the only holder of the model credential, of whichever backend
    (jobs/gateway/backends.py)."""

    ROLE: ClassVar[str] = "gateway"
    REQUIRED: ClassVar[tuple[str, ...]] = GATEWAY_REQUIRED

    anthropic_api_key: SecretStr | None = Field(None, alias="ANTHROPIC_API_KEY")
    anthropic_base_url: HttpUrl = Field("https://api.anthropic.com", alias="ANTHROPIC_BASE_URL")
    claude_code_oauth_token: SecretStr | None = Field(None, alias="CLAUDE_CODE_OAUTH_TOKEN")
    anthropic_auth_token: SecretStr | None = Field(None, alias="ANTHROPIC_AUTH_TOKEN")
    # Amazon Bedrock: credentials from these or botocore's own chain (AWS_PROFILE, roles).
    claude_code_use_bedrock: bool = Field(False, alias="CLAUDE_CODE_USE_BEDROCK")
    aws_region: str | None = Field(None, alias="AWS_REGION")
    aws_access_key_id: SecretStr | None = Field(None, alias="AWS_ACCESS_KEY_ID")
    aws_secret_access_key: SecretStr | None = Field(None, alias="AWS_SECRET_ACCESS_KEY")
    aws_session_token: SecretStr | None = Field(None, alias="AWS_SESSION_TOKEN")
    aws_profile: str | None = Field(None, alias="AWS_PROFILE")
    anthropic_bedrock_base_url: HttpUrl | None = Field(None, alias="ANTHROPIC_BEDROCK_BASE_URL")
    # Google Vertex AI: a service-account key file, or google-auth's application default.
    claude_code_use_vertex: bool = Field(False, alias="CLAUDE_CODE_USE_VERTEX")
    cloud_ml_region: str | None = Field(None, alias="CLOUD_ML_REGION")
    anthropic_vertex_project_id: str | None = Field(None, alias="ANTHROPIC_VERTEX_PROJECT_ID")
    google_application_credentials: Path | None = Field(
        None, alias="GOOGLE_APPLICATION_CREDENTIALS"
    )
    anthropic_vertex_base_url: HttpUrl | None = Field(None, alias="ANTHROPIC_VERTEX_BASE_URL")

    def require(self, names: tuple[str, ...]) -> Self:
        if "a model backend" not in names:
            return super().require(names)
        chosen = (
            self.claude_code_use_bedrock,
            self.claude_code_use_vertex,
            *(s and s.get_secret_value() for s in self._model_tokens()),
        )
        if not any(chosen):
            raise MissingSetting(f"no model backend is configured: set {MODEL_BACKEND_CHOICES}")
        return super().require(tuple(n for n in names if n != "a model backend"))

    def _model_tokens(self) -> tuple[SecretStr | None, ...]:
        return (self.anthropic_auth_token, self.anthropic_api_key, self.claude_code_oauth_token)

    def secrets(self) -> list[str]:
        found = super().secrets()
        path = self.google_application_credentials
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            key = json.loads(path.read_text()) if path else {}
            found += [key["private_key"], key["private_key_id"]]
        return [s for s in found if isinstance(s, str) and s]


class EgressSettings(CommonSettings):
    """The egress process: it parses the sandboxes' traffic to registries, and holds nothing."""

    ROLE: ClassVar[str] = "egress"


class WorkerSettings(CommonSettings):
    """The worker: the App's key (it mints installation tokens), Docker, the sessions' limits."""

    ROLE: ClassVar[str] = "worker"
    REQUIRED: ClassVar[tuple[str, ...]] = WORKER_REQUIRED

    github_app_id: int | None = Field(None, alias="GITHUB_APP_ID")
    github_private_key: SecretStr | None = Field(None, alias="GITHUB_PRIVATE_KEY")
    github_private_key_path: Path | None = Field(None, alias="GITHUB_PRIVATE_KEY_PATH")
    github_api_url: HttpUrl = Field("https://api.github.com", alias="GITHUB_API_URL")
    agent_image: str = Field("claudecluster/agent:latest", alias="AGENT_IMAGE")
    # The worker's /metrics, /livez and /readyz (jobs/common/endpoint.py); unset: none. Workers
    # may run on other hosts than the web, so each is scraped where it runs.
    metrics_port: int | None = Field(None, alias="METRICS_PORT", ge=0, lt=65536)
    metrics_host: str = Field("0.0.0.0", alias="METRICS_HOST")

    # Seconds between two reaper passes (RQ's maintenance interval; RQ's own default is 600).
    reaper_interval: int = Field(60, alias="REAPER_INTERVAL", ge=1, le=3600)
    # Seconds between a busy worker's heartbeats (RQ's job monitoring interval). A session whose
    # heartbeat lapses for this plus RQ's fixed 60 s is abandoned: the next maintenance pass of
    # any worker on the queue ends its comment as interrupted (docs/hosts.md).
    job_monitoring_interval: int = Field(30, alias="JOB_MONITORING_INTERVAL", ge=1, le=600)
    # Fair sharing (jobs/common/fairness.py): at most this many sessions of one installation
    # run at once across all workers on the queue (0: no limit); its further requests wait in
    # the queue, and another installation's go first.
    max_sessions_per_installation: int = Field(
        4, alias="MAX_SESSIONS_PER_INSTALLATION", ge=0, le=10_000
    )
    # This worker host's name on its sandbox containers and workspaces, so that each host's
    # reaper removes only its own; unset: named after the Docker engine (`docker info`: its
    # host name, ID and data root), since the containers belong to an engine (sandbox/host.py).
    worker_host_id: str | None = Field(None, alias="WORKER_HOST_ID")

    @field_validator("worker_host_id")
    @classmethod
    def _host_id(cls, value: str | None) -> str | None:
        if value is not None and not HOST_ID.fullmatch(value):
            raise ValueError(
                "must be 1 to 128 letters, digits, '.', '_', ':' or '-', starting with a "
                "letter or digit"
            )
        return value

    # What the first SIGTERM does to a running session: `warm` lets it finish (a second signal
    # stops it); `cold` stops it at once, removes its container and ends its comment as
    # interrupted. Compose and Kubernetes send one SIGTERM and then SIGKILL, which skips that
    # clean-up, so the shipped deployments set `cold` (jobs/worker.py).
    worker_shutdown: Literal["warm", "cold"] = Field("warm", alias="WORKER_SHUTDOWN")
    # Session limits: sensible defaults; repo config (issue 3) may lower them per repository.
    max_turns: int = Field(40, alias="CLAUDE_MAX_TURNS", gt=0)
    model: str | None = Field(None, alias="CLAUDE_MODEL")
    # The models (names or families: opus, sonnet, haiku) sessions may use at all; the gateway
    # refuses others. Unset: any; a repository's `model` narrows it to that one (and haiku,
    # which the CLI uses for small side requests).
    allowed_models: list[str] | None = Field(None, alias="CLAUDE_ALLOWED_MODELS")

    @field_validator("allowed_models", mode="before")
    @classmethod
    def _names(cls, value: object) -> object:
        if isinstance(value, str):
            names = [name.strip() for name in value.split(",") if name.strip()]
            return names or None
        return value

    # The CLI's own default (10 retries, backoff to ~40 s) keeps a dead API busy for 3 minutes.
    model_retries: int = Field(4, alias="CLAUDE_MAX_RETRIES", ge=0)
    sandbox_memory: str = Field("4g", alias="SANDBOX_MEMORY")
    sandbox_cpus: float = Field(1.0, alias="SANDBOX_CPUS", gt=0)
    sandbox_pids: int = Field(512, alias="SANDBOX_PIDS", gt=0)
    # The OCI runtime of the sandbox containers: runc (Docker's default) or runsc (gVisor, which
    # must be registered with dockerd under that name, with runtimeArgs ["--network=none",
    # "--host-uds=open"]: no network, and leave to connect to the gateway's Unix socket).
    sandbox_runtime: str = Field("runc", alias="SANDBOX_RUNTIME", min_length=1)
    # Sizes in Docker's notation (512m, 4g). The root filesystem is read-only: the CLI writes only
    # to /tmp and its config dir, each a tmpfs of this size (tmpfs pages count as memory).
    sandbox_tmp_size: str = Field("1g", alias="SANDBOX_TMP_SIZE")
    sandbox_config_size: str = Field("256m", alias="SANDBOX_CONFIG_SIZE")
    # The work tree is a bind mount with no size of its own: a session whose tree grows past this
    # is ended (checked every second while it runs, and once more at the end).
    sandbox_workspace_size: str = Field("10g", alias="SANDBOX_WORKSPACE_SIZE")
    # Seconds between checks of a running sandbox: `/claude stop`, the work tree's size (walked
    # at most a fifth of the time however big it is) and the process count.
    sandbox_check_interval: float = Field(1.0, alias="SANDBOX_CHECK_INTERVAL", gt=0)
    # Warm sandboxes (jobs/sandbox/pool.py): agent containers kept started on this host, each
    # claimed by one session; 0 turns the pool off. An idle one holds a few MB of memory.
    sandbox_pool_size: int = Field(1, alias="SANDBOX_POOL_SIZE", ge=0, le=16)
    # The repository cache (jobs/sandbox/mirror.py): a bare mirror per repository and
    # installation on this host, so a session fetches only what changed since the last one.
    repo_cache: bool = Field(True, alias="REPO_CACHE")
    repo_cache_dir_path: Path | None = Field(None, alias="REPO_CACHE_DIR")
    # Past this total the least recently used mirrors are removed.
    repo_cache_max_gb: float = Field(20.0, alias="REPO_CACHE_MAX_GB", gt=0)
    # Seconds a session waits for a mirror another session holds, then clones from GitHub.
    repo_cache_lock_timeout: float = Field(60.0, alias="REPO_CACHE_LOCK_TIMEOUT", gt=0)

    # Follow-ups continue the session (jobs/session/continuity.py): the CLI's transcript of a
    # thread is kept in Redis (any worker host may take the next session), compressed, for at
    # most this many days and only while the issue or pull request is open; one whose raw
    # JSONL is larger than TRANSCRIPT_MAX_SIZE is not kept. 0 days turns continuity off.
    transcript_retention_days: int = Field(14, alias="TRANSCRIPT_RETENTION_DAYS", ge=0, le=365)
    transcript_max_size: str = Field("16m", alias="TRANSCRIPT_MAX_SIZE")

    @property
    def repo_cache_dir(self) -> Path:
        return self.repo_cache_dir_path or self.workspace_root / "repo-cache"

    @field_validator(
        "sandbox_tmp_size", "sandbox_config_size", "sandbox_workspace_size", "transcript_max_size"
    )
    @classmethod
    def _docker_size(cls, value: str) -> str:
        value = value.strip().lower()
        if not re.fullmatch(r"[0-9]+[kmg]?b?", value):
            raise ValueError("must be a size in Docker's notation, such as 512m or 4g")
        return value

    @field_validator("github_private_key")
    @classmethod
    def _pem_text(cls, value: SecretStr | None) -> SecretStr | None:
        # Many secret stores flatten newlines to a literal "\n"; accept both forms.
        if not value or not value.get_secret_value():
            return value
        return SecretStr(value.get_secret_value().replace("\\n", "\n").strip() + "\n")

    @cached_property
    def private_key(self) -> str:
        """The App's PEM key, from the variable or the file; checked to be a private key."""
        pem = self.github_private_key.get_secret_value() if self.github_private_key else ""
        if not pem and self.github_private_key_path:
            try:
                pem = self.github_private_key_path.read_text()
            except OSError as exc:
                raise ConfigError(
                    f"GITHUB_PRIVATE_KEY_PATH: cannot read the key file ({exc.strerror})"
                ) from None
        if not pem:
            raise ConfigError("GITHUB_PRIVATE_KEY (or GITHUB_PRIVATE_KEY_PATH) is not set")
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        try:
            load_pem_private_key(pem.encode(), password=None)
        except (ValueError, TypeError):
            raise ConfigError("GITHUB_PRIVATE_KEY: not a PEM private key") from None
        return pem

    def secrets(self) -> list[str]:
        found = super().secrets()
        with contextlib.suppress(ConfigError):
            found.append(self.private_key)  # also when it came from GITHUB_PRIVATE_KEY_PATH
        return found


def settings_at_start(settings_class: type[S], poll: float = 2.0) -> S | None:
    """A process's settings as it starts, or None after one line naming what is wrong (the
    caller exits CONFIG_ERROR_EXIT: an operator wants the variable to set, not a traceback).

    In setup mode (WAIT_FOR_CONFIG) settings that are merely missing are waited for, re-read
    from the env files every `poll` seconds: setup writes them while the service runs."""
    said = ""
    while True:
        try:
            settings = settings_class.load()
        except MissingSetting as exc:
            if not waiting_for_config():
                print(f"configuration: {exc}", file=sys.stderr, flush=True)
                return None
            if str(exc) != said:
                said = str(exc)
                print(
                    f"configuration: waiting for setup ({exc}); open the web's /setup, "
                    "or run `claudecluster setup`",
                    file=sys.stderr,
                    flush=True,
                )
            time.sleep(poll)
            continue
        except ConfigError as exc:
            print(f"configuration: {exc}", file=sys.stderr, flush=True)
            return None
        if said:
            print("configuration: found, starting", file=sys.stderr, flush=True)
        return settings


SETTINGS = {
    "web": WebSettings,
    "worker": WorkerSettings,
    "gateway": GatewaySettings,
    "egress": EgressSettings,
}


def main(argv: list[str]) -> int:
    """`python -m app check [web|worker|gateway|all]`: the run script's one-line answer."""
    role = argv[2] if len(argv) > 2 else "all"
    status = 0
    for name in ROLES if role == "all" else (role,):
        try:
            SETTINGS[name].load()
        except ConfigError as exc:
            print(f"configuration of the {name}: {exc}", file=sys.stderr)
            status = CONFIG_ERROR_EXIT
    return status
