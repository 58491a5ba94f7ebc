"""Scrubbing secrets from anything that leaves a process: comments, logs, job results, errors.

Known values (the App key, the webhook secret, the model credential of any backend, tokens
minted at run time) are replaced exactly; well-known token shapes are caught too, for secrets
we never held ourselves.
"""

from __future__ import annotations

import re
import threading

REDACTED = "[redacted]"
_PATTERNS = re.compile(
    r"gh[pousr]_[A-Za-z0-9]{20,}"
    r"|github_pat_[A-Za-z0-9_]{20,}"
    r"|sk-ant-[A-Za-z0-9_-]{10,}"
    r"|ccgw-[A-Za-z0-9_-]{16,}"
    r"|\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"  # AWS access key ids
    r"|\bya29\.[A-Za-z0-9_-]{16,}"  # Google OAuth access tokens
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----"
    r"|(?<=x-access-token:)[^@\s]+",
    re.DOTALL,
)


class Redactor:
    def __init__(self, *secrets: str | None) -> None:
        self._lock = threading.Lock()
        self._secrets: set[str] = set()
        for secret in secrets:
            self.add(secret)

    def learn(self, settings) -> Redactor:
        """Add the secrets a role's settings hold (its `secrets()`)."""
        for secret in settings.secrets():
            self.add(secret)
        return self

    def add(self, secret: str | None) -> None:
        # Very short values would redact ordinary words; they are not real credentials anyway.
        if secret and len(secret) >= 8:
            with self._lock:
                self._secrets.add(secret)

    def __call__(self, text: object) -> str:
        out = str(text)
        with self._lock:
            secrets = sorted(self._secrets, key=len, reverse=True)
        for secret in secrets:
            out = out.replace(secret, REDACTED)
        return _PATTERNS.sub(REDACTED, out)


# The worker process holds one redactor that learns each token as it is minted.
redactor = Redactor()
