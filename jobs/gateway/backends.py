"""The model backends the gateway can reach, each adding its own credential on the way out.

The sandbox never holds a model credential, whichever backend serves it: the CLI in the sandbox
is pointed at the relay (http://127.0.0.1:RELAY_PORT) with the session's key, in the mode the
backend needs (the Messages API, or Bedrock's and Vertex's documented skip-auth base-URL modes),
and the gateway process adds the real credential here: an `x-api-key`, a bearer token, a SigV4
signature or a Google access token.

Selection follows the CLI's own precedence (code.claude.com env-vars docs): the cloud flags
(CLAUDE_CODE_USE_BEDROCK, CLAUDE_CODE_USE_VERTEX), then ANTHROPIC_AUTH_TOKEN, ANTHROPIC_API_KEY,
CLAUDE_CODE_OAUTH_TOKEN.

What the CLI sends (claude 2.1.332, observed against a recording server):
* Messages API modes: `POST /v1/messages?beta=true`; with CLAUDE_CODE_OAUTH_TOKEN it sends
  `Authorization: Bearer <token>` and adds the `oauth-2025-04-20` beta, no x-api-key.
* Bedrock (CLAUDE_CODE_USE_BEDROCK=1, CLAUDE_CODE_SKIP_BEDROCK_AUTH=1, ANTHROPIC_BEDROCK_BASE_URL):
  `GET /inference-profiles?type=SYSTEM_DEFINED` (the AWS SDK, without the custom headers; the CLI
  goes on when it is refused), then `POST /model/<id>/invoke-with-response-stream` with the
  Messages body less `model` and `stream`, plus `anthropic_version: bedrock-2023-05-31` and
  `anthropic_beta: [...]`; the model id of eu-west-1 is `eu.anthropic.claude-opus-5-5`.
* Vertex (CLAUDE_CODE_USE_VERTEX=1, CLAUDE_CODE_SKIP_VERTEX_AUTH=1, ANTHROPIC_VERTEX_BASE_URL):
  `POST /projects/<p>/locations/<r>/publishers/anthropic/models/<m>:streamRawPredict` with
  `anthropic_version: vertex-2023-10-16` and `stream: true` in the body, no `model`.
* In both cloud modes the CLI sends ANTHROPIC_CUSTOM_HEADERS with each model request, so the
  session key travels as `x-api-key` there too, and the gateway checks it as for the API.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

import httpx

from jobs.common.redact import Redactor
from jobs.common.settings import MODEL_BACKEND_CHOICES, ConfigError, GatewaySettings

NAMES = ("anthropic-api-key", "claude-subscription", "llm-gateway", "bedrock", "vertex")
OAUTH_BETA = "oauth-2025-04-20"
PROBE_MODEL = "claude-haiku-4-5"
_MODEL_ID = re.compile(r"[A-Za-z0-9._:@-]{1,200}")
_GOOGLE_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)


@dataclass(frozen=True)
class Route:
    """A request path the backend lets through: which model it names, and how it answers.

    `metered`: a model answer whose usage counts; `stream`: the answer's encoding when it
    streams ("sse" or "eventstream"), else None (a JSON answer); `model` is None when the body
    names it (the Messages API)."""

    upstream_path: str
    model: str | None
    metered: bool
    stream: str | None = None


class Backend:
    """One kind of model backend: where it is, what it lets through, how it adds the credential.

    `body_fields`: what this backend's body carries beside the Messages API's fields;
    `extra_betas`: betas the CLI sends in this mode that the API-key mode never does."""

    name = ""
    body_fields: frozenset[str] = frozenset()
    extra_betas: frozenset[str] = frozenset()
    forwards_client_headers = True

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.upstream!r})"

    def describe(self) -> str:
        raise NotImplementedError

    def route(self, path: str, query: str) -> Route | None:
        """The route of a request the CLI may make, or None: refused."""
        if query not in ("", "beta=true"):
            return None
        if path == "/v1/messages":
            return Route(f"{path}?{query}" if query else path, None, True, "sse")
        if path == "/v1/messages/count_tokens":
            return Route(f"{path}?{query}" if query else path, None, False)
        return None

    def authorize(self, url: str, headers: list[tuple[str, str]], body: bytes) -> list[tuple]:
        """The headers to send upstream, with the credential added."""
        raise NotImplementedError

    def cli_env(self, relay_url: str, session_key: str) -> dict[str, str]:
        """What the sandbox CLI needs to reach this backend through the relay: nothing secret
        but the session's own key, worthless once the session ends."""
        return {"ANTHROPIC_BASE_URL": relay_url, "ANTHROPIC_API_KEY": session_key}

    def secrets(self) -> list[str]:
        """The credential's values, for the gateway's redactor."""
        return []

    def probe_request(self) -> tuple[str, dict[str, Any]]:
        """One minimal real request: its path and body (a one-token answer from a small model)."""
        return "/v1/messages", {
            "model": PROBE_MODEL,
            "max_tokens": 1,
            "messages": [{"role": "user", "content": "ping"}],
        }


class AnthropicApiKey(Backend):
    name = "anthropic-api-key"

    def __init__(self, upstream: str, key: str) -> None:
        super().__init__(upstream)
        self._key = key

    def describe(self) -> str:
        return f"the Anthropic API at {self.upstream} with an API key"

    def authorize(self, url: str, headers: list[tuple[str, str]], body: bytes) -> list[tuple]:
        return [*headers, ("x-api-key", self._key)]

    def secrets(self) -> list[str]:
        return [self._key]


class ClaudeSubscription(AnthropicApiKey):
    """A Claude subscription's long-lived token (`claude setup-token`), sent as the CLI does."""

    name = "claude-subscription"

    def describe(self) -> str:
        return f"the Anthropic API at {self.upstream} with a Claude subscription token"

    def authorize(self, url: str, headers: list[tuple[str, str]], body: bytes) -> list[tuple]:
        betas = [v for k, v in headers if k.lower() == "anthropic-beta"]
        rest = [(k, v) for k, v in headers if k.lower() != "anthropic-beta"]
        listed = [b.strip() for value in betas for b in value.split(",") if b.strip()]
        if OAUTH_BETA not in listed:
            listed.append(OAUTH_BETA)
        beta = ("anthropic-beta", ",".join(listed))
        return [*rest, beta, ("authorization", f"Bearer {self._key}")]


class LlmGateway(ClaudeSubscription):
    """Any Anthropic-compatible gateway (LiteLLM and the like): the Messages API with a bearer."""

    name = "llm-gateway"

    def describe(self) -> str:
        return f"the LLM gateway at {self.upstream} with a bearer token"

    def authorize(self, url: str, headers: list[tuple[str, str]], body: bytes) -> list[tuple]:
        return [*headers, ("authorization", f"Bearer {self._key}")]


class Bedrock(Backend):
    """Amazon Bedrock's runtime, signed with SigV4 (service "bedrock") by botocore."""

    name = "bedrock"
    body_fields = frozenset({"anthropic_version", "anthropic_beta"})
    forwards_client_headers = False  # Bedrock reads the betas from the body; nothing to pass on
    _PATH = re.compile(r"/model/([^/]+)/(invoke|invoke-with-response-stream)")

    def __init__(self, upstream: str, region: str, credentials: Any) -> None:
        super().__init__(upstream)
        self.region = region
        self._credentials = credentials  # botocore's, refreshed by botocore when they expire

    def describe(self) -> str:
        default = f"https://bedrock-runtime.{self.region}.amazonaws.com"
        where = "" if self.upstream == default else f" via {self.upstream}"
        return f"Amazon Bedrock in {self.region}{where}"

    def route(self, path: str, query: str) -> Route | None:
        match = self._PATH.fullmatch(path)
        if query or not match:
            return None
        model = unquote(match[1])
        if not _MODEL_ID.fullmatch(model):
            return None
        streams = match[2] == "invoke-with-response-stream"
        target = f"/model/{quote(model, safe='')}/{match[2]}"
        return Route(target, model, True, "eventstream" if streams else None)

    def authorize(self, url: str, headers: list[tuple[str, str]], body: bytes) -> list[tuple]:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        # Only what Bedrock reads is sent, and all of it is signed.
        wanted = {"accept": "application/json", "accept-encoding": "identity"}
        wanted.update((k.lower(), v) for k, v in headers if k.lower() in wanted)
        request = AWSRequest(
            method="POST",
            url=url,
            data=body,
            headers={"content-type": "application/json", **wanted},
        )
        SigV4Auth(self._credentials.get_frozen_credentials(), "bedrock", self.region).add_auth(
            request
        )
        return list(request.headers.items())

    def cli_env(self, relay_url: str, session_key: str) -> dict[str, str]:
        return {
            "CLAUDE_CODE_USE_BEDROCK": "1",
            "CLAUDE_CODE_SKIP_BEDROCK_AUTH": "1",
            "ANTHROPIC_BEDROCK_BASE_URL": relay_url,
            "AWS_REGION": self.region,
            "ANTHROPIC_CUSTOM_HEADERS": f"x-api-key: {session_key}",
        }

    def secrets(self) -> list[str]:
        frozen = self._credentials.get_frozen_credentials()
        return [s for s in (frozen.access_key, frozen.secret_key, frozen.token) if s]

    def probe_request(self) -> tuple[str, dict[str, Any]]:
        prefix = {"eu": "eu.", "ap": "apac.", "us": "us."}.get(self.region[:2], "")
        return f"/model/{prefix}anthropic.{PROBE_MODEL}/invoke", {
            "anthropic_version": "bedrock-2023-05-31",
            "max_tokens": 1,
            "messages": [{"role": "user", "content": "ping"}],
        }


class Vertex(Backend):
    """Google Vertex AI, with an access token google-auth refreshes in the gateway alone."""

    name = "vertex"
    body_fields = frozenset({"anthropic_version"})
    # Sent by the CLI in Vertex mode (2.1.332); the tools they would enable run on the API's
    # side, and the body checks refuse every tool but the client's own.
    extra_betas = frozenset({"web-search-2025-03-05", "tool-search-tool-2025-10-19"})

    def __init__(self, upstream: str, region: str, project: str, credentials: Any) -> None:
        super().__init__(upstream)
        self.region, self.project = region, project
        self._credentials = credentials
        self._lock = threading.Lock()
        where = f"/projects/{re.escape(project)}/locations/{re.escape(region)}"
        self._path = re.compile(
            where + r"/publishers/anthropic/models/([^/:]+):(rawPredict|streamRawPredict)"
        )

    def describe(self) -> str:
        where = "" if "aiplatform.googleapis.com" in self.upstream else f" via {self.upstream}"
        return f"Google Vertex AI in {self.region} for project {self.project}{where}"

    def route(self, path: str, query: str) -> Route | None:
        match = self._path.fullmatch(path)
        if query or not match or not _MODEL_ID.fullmatch(match[1]):
            return None
        if match[1] == "count-tokens":
            return Route(path, None, False) if match[2] == "rawPredict" else None
        return Route(path, match[1], True, "sse" if match[2] == "streamRawPredict" else None)

    def token(self) -> str:
        with self._lock:
            if not self._credentials.valid:
                from google.auth.transport.requests import Request

                self._credentials.refresh(Request())
            return str(self._credentials.token)

    def authorize(self, url: str, headers: list[tuple[str, str]], body: bytes) -> list[tuple]:
        return [*headers, ("authorization", f"Bearer {self.token()}")]

    def cli_env(self, relay_url: str, session_key: str) -> dict[str, str]:
        return {
            "CLAUDE_CODE_USE_VERTEX": "1",
            "CLAUDE_CODE_SKIP_VERTEX_AUTH": "1",
            "ANTHROPIC_VERTEX_BASE_URL": relay_url,
            "CLOUD_ML_REGION": self.region,
            "ANTHROPIC_VERTEX_PROJECT_ID": self.project,
            "ANTHROPIC_CUSTOM_HEADERS": f"x-api-key: {session_key}",
        }

    def secrets(self) -> list[str]:
        token = getattr(self._credentials, "token", None)
        return [token] if token else []

    def probe_request(self) -> tuple[str, dict[str, Any]]:
        where = f"/projects/{self.project}/locations/{self.region}"
        return f"{where}/publishers/anthropic/models/{PROBE_MODEL}:rawPredict", {
            "anthropic_version": "vertex-2023-10-16",
            "max_tokens": 1,
            "messages": [{"role": "user", "content": "ping"}],
        }


def configured(settings: GatewaySettings) -> list[str]:
    """The names of every backend whose variables are set, in the CLI's order of precedence."""
    s = settings
    found = {
        "bedrock": bool(s.claude_code_use_bedrock),
        "vertex": bool(s.claude_code_use_vertex),
        "llm-gateway": bool(s.anthropic_auth_token and s.anthropic_auth_token.get_secret_value()),
        "anthropic-api-key": bool(s.anthropic_api_key and s.anthropic_api_key.get_secret_value()),
        "claude-subscription": bool(
            s.claude_code_oauth_token and s.claude_code_oauth_token.get_secret_value()
        ),
    }
    return [name for name, present in found.items() if present]


def selected(settings: GatewaySettings) -> Backend:
    """The backend the gateway uses: the first configured one; ConfigError when there is none
    or it lacks a variable."""
    names = configured(settings)
    if not names:
        raise ConfigError(f"no model backend is configured: set {MODEL_BACKEND_CHOICES}")
    return _BUILD[names[0]](settings)


def _secret(value: Any) -> str:
    return value.get_secret_value() if value is not None else ""


def _api_key(s: GatewaySettings) -> Backend:
    return AnthropicApiKey(s.anthropic_base_url, _secret(s.anthropic_api_key))


def _subscription(s: GatewaySettings) -> Backend:
    return ClaudeSubscription(s.anthropic_base_url, _secret(s.claude_code_oauth_token))


def _llm_gateway(s: GatewaySettings) -> Backend:
    if "anthropic_base_url" not in s.model_fields_set:
        raise ConfigError("ANTHROPIC_AUTH_TOKEN is set but ANTHROPIC_BASE_URL (the gateway) is not")
    return LlmGateway(s.anthropic_base_url, _secret(s.anthropic_auth_token))


def _bedrock(s: GatewaySettings) -> Backend:
    import botocore.session
    from botocore.credentials import Credentials

    if not s.aws_region:
        raise ConfigError("CLAUDE_CODE_USE_BEDROCK is set but AWS_REGION is not")
    if s.aws_access_key_id or s.aws_secret_access_key:
        if not (_secret(s.aws_access_key_id) and _secret(s.aws_secret_access_key)):
            raise ConfigError("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY go together")
        credentials: Any = Credentials(
            _secret(s.aws_access_key_id),
            _secret(s.aws_secret_access_key),
            _secret(s.aws_session_token) or None,
        )
    else:  # botocore's own chain: profile, shared files, SSO, container and instance roles
        session = botocore.session.Session(profile=s.aws_profile)
        credentials = session.get_credentials()
        if credentials is None:
            raise ConfigError(
                "CLAUDE_CODE_USE_BEDROCK is set but botocore finds no AWS credentials "
                "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)"
            )
    upstream = (
        s.anthropic_bedrock_base_url or f"https://bedrock-runtime.{s.aws_region}.amazonaws.com"
    )
    return Bedrock(upstream, s.aws_region, credentials)


def _vertex(s: GatewaySettings) -> Backend:
    import google.auth
    from google.auth.exceptions import GoogleAuthError
    from google.oauth2 import service_account

    if not (s.cloud_ml_region and s.anthropic_vertex_project_id):
        raise ConfigError(
            "CLAUDE_CODE_USE_VERTEX is set but CLOUD_ML_REGION or ANTHROPIC_VERTEX_PROJECT_ID "
            "is not"
        )
    try:
        if s.google_application_credentials:
            credentials: Any = service_account.Credentials.from_service_account_file(
                str(s.google_application_credentials), scopes=_GOOGLE_SCOPES
            )
        else:
            credentials, _ = google.auth.default(scopes=_GOOGLE_SCOPES)
    except (OSError, ValueError, GoogleAuthError) as exc:
        raise ConfigError(
            f"GOOGLE_APPLICATION_CREDENTIALS: not a usable service-account key "
            f"({type(exc).__name__})"
        ) from None
    region = s.cloud_ml_region
    host = "aiplatform.googleapis.com"
    if region != "global":
        host = f"{region}-{host}"
    upstream = s.anthropic_vertex_base_url or f"https://{host}/v1"
    return Vertex(upstream, region, s.anthropic_vertex_project_id, credentials)


_BUILD = {
    "anthropic-api-key": _api_key,
    "claude-subscription": _subscription,
    "llm-gateway": _llm_gateway,
    "bedrock": _bedrock,
    "vertex": _vertex,
}


def probe(settings: GatewaySettings, timeout: float = 10) -> tuple[bool, str]:
    """Send one minimal real request upstream with the credential: whether the backend answered
    it, and why in one line with no secret in it."""
    try:
        backend = selected(settings)
    except ConfigError as exc:
        return False, str(exc)
    scrub = Redactor(*settings.secrets())
    path, request = backend.probe_request()
    body = json.dumps(request).encode()
    url = backend.upstream + path
    try:
        headers = backend.authorize(
            url,
            [("content-type", "application/json"), ("anthropic-version", "2023-06-01")],
            body,
        )
        scrub = Redactor(*settings.secrets(), *backend.secrets())
        with httpx.Client(timeout=timeout) as client:
            answer = client.post(url, content=body, headers=headers)
    except Exception as exc:  # any failure to reach it is the answer, told in one line
        return False, scrub(f"{backend.describe()}: not reached ({type(exc).__name__}: {exc})")
    if answer.status_code == 200:
        return True, f"{backend.describe()}: answered"
    return False, scrub(
        f"{backend.describe()}: {answer.status_code} {_reason(answer)}".replace("\n", " ")[:300]
    )


def _reason(answer: httpx.Response) -> str:
    try:
        payload: Any = answer.json()
    except ValueError:
        return answer.reason_phrase
    if isinstance(payload, Mapping):
        error = payload.get("error")
        if isinstance(error, Mapping):
            return str(error.get("message") or error.get("type") or answer.reason_phrase)
        if isinstance(payload.get("message"), str):  # AWS: {"message": "..."}
            return payload["message"]
    return answer.reason_phrase
