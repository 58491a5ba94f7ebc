"""The model backend the gateway would use, and whether it answers its credential.

The gateway's own module says which backends are configured, which one is used and how to probe
it (jobs/gateway/backends.py): the check asks it, so that it tests what the gateway will do.
"""

from __future__ import annotations

from jobs.cli.checks import Check
from jobs.common.settings import ConfigError, GatewaySettings, env_file
from jobs.gateway import backends


def model_check(settings: GatewaySettings, timeout: float = 10) -> Check:
    try:
        backend = backends.selected(settings)
    except ConfigError as exc:
        return Check("model backend", False, f"{exc} (in {env_file('gateway')})")
    ok, answer = backends.probe(settings, timeout=timeout)  # its answer describes the backend
    line = f"{backend.name}: {answer}"
    if not ok:
        return Check("model backend", False, line)
    several = backends.configured(settings)
    if len(several) > 1:
        return Check(
            "model backend",
            True,
            f"{line}; several are configured ({', '.join(several)}): {backend.name} is used, "
            f"remove the others from {env_file('gateway')}",
            warning=True,
        )
    return Check("model backend", True, line)
