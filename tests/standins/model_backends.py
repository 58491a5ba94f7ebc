"""Each model backend of the gateway with its stand-in, for the tests: `backend_kit(name, dir)`.

A kit holds the gateway's variables for that backend (what an operator puts in
deploy/env/gateway.env), the scripted model behind it (`api`, an `AnthropicStandIn`), the
variables that make its credential wrong, and every secret value that must never reach the
sandbox. Credentials are generated at run time.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

from jobs.common.settings import GatewaySettings
from jobs.gateway.backends import OAUTH_BETA
from tests.standins.anthropic import AnthropicStandIn
from tests.standins.bedrock import BedrockStandIn
from tests.standins.vertex import VertexStandIn

MESSAGE = {
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "hi"}],
    "tools": [{"name": "Write", "input_schema": {"type": "object"}}],
}
KINDS = ("anthropic-api-key", "claude-subscription", "llm-gateway", "bedrock", "vertex")


@dataclass
class Kit:
    name: str
    env: dict[str, str]  # the gateway's variables for this backend
    api: AnthropicStandIn  # the scripted model behind it
    wrong: dict[str, str]  # the same, with a credential the stand-in refuses
    fixed_secrets: list[str]
    issued: Callable[[], list[str]] = list  # secrets minted while it runs (access tokens)
    refused: Callable[[], int] = field(default=lambda: 0)  # requests refused for the credential

    def settings(self, **more: str) -> GatewaySettings:
        return GatewaySettings.parse(**self.env, **more)

    def wrong_settings(self) -> GatewaySettings:
        return GatewaySettings.parse(**{**self.env, **self.wrong})

    @property
    def secrets(self) -> list[str]:
        return [*self.fixed_secrets, *self.issued()]


def _token(prefix: str) -> str:
    return f"{prefix}-{secrets.token_urlsafe(32)}"


@contextlib.contextmanager
def backend_kit(name: str, directory: Path) -> Iterator[Kit]:
    """The backend `name` (one of KINDS) and its stand-in, running."""
    if name == "bedrock":
        with _bedrock() as kit:
            yield kit
    elif name == "vertex":
        with _vertex(directory) as kit:
            yield kit
    else:
        with _anthropic(name) as kit:
            yield kit


@contextlib.contextmanager
def _anthropic(name: str) -> Iterator[Kit]:
    credential = _token("cctest-" + name)
    variable = {
        "anthropic-api-key": "ANTHROPIC_API_KEY",
        "claude-subscription": "CLAUDE_CODE_OAUTH_TOKEN",
        "llm-gateway": "ANTHROPIC_AUTH_TOKEN",
    }[name]
    bearer = name != "anthropic-api-key"
    beta = OAUTH_BETA if name == "claude-subscription" else None
    with AnthropicStandIn(expected_api_key=credential, bearer=bearer, required_beta=beta) as api:
        yield Kit(
            name,
            {variable: credential, "ANTHROPIC_BASE_URL": api.url},
            api,
            {variable: _token("cctest-wrong")},
            [credential],
            refused=lambda: sum(r.kind == "rejected" for r in api.requests),
        )


@contextlib.contextmanager
def _bedrock() -> Iterator[Kit]:
    access = "CCTEST" + secrets.token_hex(7).upper()
    secret, session = secrets.token_urlsafe(30), secrets.token_urlsafe(60)
    with BedrockStandIn(access, secret, session, region="eu-west-1") as cloud:
        yield Kit(
            "bedrock",
            {
                "CLAUDE_CODE_USE_BEDROCK": "1",
                "AWS_REGION": "eu-west-1",
                "AWS_ACCESS_KEY_ID": access,
                "AWS_SECRET_ACCESS_KEY": secret,
                "AWS_SESSION_TOKEN": session,
                "ANTHROPIC_BEDROCK_BASE_URL": cloud.url,
            },
            cloud.api,
            {"AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(30)},
            [access, secret, session],
            refused=lambda: len(cloud.refused()),
        )


@contextlib.contextmanager
def _vertex(directory: Path) -> Iterator[Kit]:
    with VertexStandIn(project="cc-test-project", region="europe-west1") as cloud:
        key_file = cloud.service_account_key(directory / "vertex-key.json")
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        wrong_file = cloud.service_account_key(directory / "vertex-other-key.json", other)
        pem_body = cloud.key_pem().splitlines()[1]  # a line of the key itself
        yield Kit(
            "vertex",
            {
                "CLAUDE_CODE_USE_VERTEX": "1",
                "CLOUD_ML_REGION": "europe-west1",
                "ANTHROPIC_VERTEX_PROJECT_ID": "cc-test-project",
                "GOOGLE_APPLICATION_CREDENTIALS": str(key_file),
                "ANTHROPIC_VERTEX_BASE_URL": cloud.url + "/v1",
            },
            cloud.api,
            {"GOOGLE_APPLICATION_CREDENTIALS": str(wrong_file)},
            [pem_body, str(key_file)],
            issued=lambda: sorted(cloud.issued),
            refused=lambda: len(cloud.refused()),
        )


def request_for(kit: Kit, model: str = "claude-sonnet-5-5", stream: bool = True):
    """The path and body the CLI sends for one message in this backend's mode."""
    if kit.name == "bedrock":
        model = "eu.anthropic." + model
        verb = "invoke-with-response-stream" if stream else "invoke"
        body = dict(MESSAGE, anthropic_version="bedrock-2023-05-31", anthropic_beta=[])
        return f"/model/{model}/{verb}", body
    if kit.name == "vertex":
        verb = "streamRawPredict" if stream else "rawPredict"
        where = "/projects/cc-test-project/locations/europe-west1/publishers/anthropic/models"
        return f"{where}/{model}:{verb}", dict(MESSAGE, anthropic_version="vertex-2023-10-16")
    return "/v1/messages?beta=true", dict(MESSAGE, model=model, stream=stream)
