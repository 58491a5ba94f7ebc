"""The model backend the gateway would use, and whether it answers its credential.

The gateway's own module (jobs/gateway/backends.py) says which backends are configured, which
one is used and how to probe it. Where that module is not there yet, the one backend the gateway
has always had is probed here: the Anthropic API key, with a `count_tokens` request that costs
no tokens.
"""

from __future__ import annotations

import httpx

from jobs.cli.checks import Check
from jobs.common.settings import ConfigError, GatewaySettings, env_file

try:
    from jobs.gateway import backends
except ImportError:  # a gateway from before model backends: only the API key
    backends = None

PROBE_MODEL = "claude-haiku-4-5"  # the cheapest family; count_tokens is free for each


def model_check(settings: GatewaySettings, timeout: float = 10) -> Check:
    if backends is None:
        return _api_key_check(settings, timeout)
    try:
        backend = backends.selected(settings)
    except ConfigError as exc:
        return Check("model backend", False, f"{exc} (in {env_file('gateway')})")
    ok, answer = backends.probe(settings, timeout=timeout)  # its answer describes the backend
    name = f"{backend.name}: {answer}"
    if not ok:
        return Check("model backend", False, name)
    several = backends.configured(settings)
    if len(several) > 1:
        return Check(
            "model backend",
            True,
            f"{name}; several are configured ({', '.join(several)}): "
            f"{backend.name} is used, remove the others from {env_file('gateway')}",
            warning=True,
        )
    return Check("model backend", True, name)


def _api_key_check(settings: GatewaySettings, timeout: float) -> Check:
    key = settings.anthropic_api_key.get_secret_value() if settings.anthropic_api_key else ""
    if not key:
        return Check(
            "model backend",
            False,
            f"no model credential: set ANTHROPIC_API_KEY in {env_file('gateway')}",
        )
    url = f"{settings.anthropic_base_url}/v1/messages/count_tokens"
    body = {"model": PROBE_MODEL, "messages": [{"role": "user", "content": "ping"}]}
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    where = f"anthropic API key at {settings.anthropic_base_url}"
    try:
        reply = httpx.post(url, json=body, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        return Check("model backend", False, f"{where}: no answer ({type(exc).__name__})")
    if reply.status_code in (401, 403):
        return Check(
            "model backend",
            False,
            f"{where}: the key was rejected ({reply.status_code}): replace ANTHROPIC_API_KEY in "
            f"{env_file('gateway')}",
        )
    if reply.status_code != 200:
        return Check("model backend", False, f"{where}: answered {reply.status_code}")
    return Check("model backend", True, f"{where}: the key is accepted")
