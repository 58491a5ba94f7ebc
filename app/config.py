"""Configuration from the environment (and a `.env` file), shared by the web and worker processes.

pydantic-settings reads and type-checks the values; `require()` turns what a role needs into one
readable line per problem, because an operator starting the service wants to know which variable
to set, not to read a validation traceback.
"""

from __future__ import annotations

import re
import sys
from functools import cached_property
from pathlib import Path

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

WEB_REQUIRED = ("GITHUB_WEBHOOK_SECRET",)
WORKER_REQUIRED = ("GITHUB_APP_ID", "GITHUB_PRIVATE_KEY")
# Only the gateway process holds the model key.
GATEWAY_REQUIRED = ("ANTHROPIC_API_KEY",)


class ConfigError(Exception):
    """A required setting is missing or malformed; the message names the variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=True)

    github_app_id: int | None = Field(None, alias="GITHUB_APP_ID")
    github_private_key: str | None = Field(None, alias="GITHUB_PRIVATE_KEY")
    github_private_key_path: Path | None = Field(None, alias="GITHUB_PRIVATE_KEY_PATH")
    github_webhook_secret: str | None = Field(None, alias="GITHUB_WEBHOOK_SECRET")
    github_api_url: str = Field("https://api.github.com", alias="GITHUB_API_URL")
    redis_url: str = Field("redis://localhost:6379/0", alias="REDIS_URL")
    anthropic_api_key: str | None = Field(None, alias="ANTHROPIC_API_KEY")
    anthropic_base_url: str = Field(
        "https://api.anthropic.com", validation_alias=AliasChoices("ANTHROPIC_BASE_URL")
    )
    agent_image: str = Field("claudecluster/agent:latest", alias="AGENT_IMAGE")

    # Session limits: sensible defaults; repo config (issue 3) may lower them per repository.
    session_timeout: int = Field(1800, alias="SESSION_TIMEOUT", gt=0)
    max_turns: int = Field(40, alias="CLAUDE_MAX_TURNS", gt=0)
    model: str | None = Field(None, alias="CLAUDE_MODEL")
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
    workspace_root: Path = Field(Path("/tmp/claudecluster"), alias="WORKSPACE_ROOT")
    # Where workers reach the gateway process; by default beside the workspaces they share.
    gateway_socket_path: Path | None = Field(None, alias="GATEWAY_SOCKET")
    queue_name: str = Field("sessions", alias="QUEUE_NAME")
    # The web process (gunicorn.conf.py reads these, so `.env` can set them too).
    host: str = Field("0.0.0.0", alias="HOST")
    port: int = Field(8000, alias="PORT", gt=0, lt=65536)
    web_concurrency: int = Field(2, alias="WEB_CONCURRENCY", gt=0)

    @field_validator("github_api_url", "anthropic_base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")

    @field_validator("sandbox_tmp_size", "sandbox_config_size", "sandbox_workspace_size")
    @classmethod
    def _docker_size(cls, value: str) -> str:
        value = value.strip().lower()
        if not re.fullmatch(r"[0-9]+[kmg]?b?", value):
            raise ValueError("must be a size in Docker's notation, such as 512m or 4g")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("github_private_key")
    @classmethod
    def _pem_text(cls, value: str | None) -> str | None:
        # Many secret stores flatten newlines to a literal "\n"; accept both forms.
        return value.replace("\\n", "\n").strip() + "\n" if value else value

    @property
    def gateway_socket(self) -> Path:
        return self.gateway_socket_path or self.workspace_root / "gateway.ctl"

    @cached_property
    def private_key(self) -> str:
        """The App's PEM key, from the variable or the file; checked to be a private key."""
        pem = self.github_private_key
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

    def require(self, names: tuple[str, ...]) -> Settings:
        missing = []
        for name in names:
            if name == "GITHUB_PRIVATE_KEY":
                try:
                    self.private_key  # noqa: B018 - loads and checks the key
                except ConfigError as exc:
                    missing.append(str(exc))
                continue
            field = next(f for f, info in type(self).model_fields.items() if info.alias == name)
            if getattr(self, field) in (None, ""):
                missing.append(f"{name} is not set")
        if missing:
            raise ConfigError("; ".join(missing))
        return self


def load_settings(*required: str, **overrides: object) -> Settings:
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = err["loc"][0] if err["loc"] else "?"
            problems.append(f"{name}: {err['msg']}")
        raise ConfigError("; ".join(problems)) from None
    return settings.require(tuple(required))


def main(argv: list[str]) -> int:
    """`python -m app check [web|worker|gateway|all]`: the run script's one-line answer."""
    role = argv[2] if len(argv) > 2 else "all"
    roles = {"web": WEB_REQUIRED, "worker": WORKER_REQUIRED, "gateway": GATEWAY_REQUIRED}
    names = roles.get(role, WEB_REQUIRED + WORKER_REQUIRED + GATEWAY_REQUIRED)
    try:
        load_settings(*names)
    except ConfigError as exc:
        print(f"configuration: {exc}", file=sys.stderr)
        return 2
    return 0
