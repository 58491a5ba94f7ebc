"""How the worker runs git: nothing from the repository or the host's config runs, ever.

Every command ignores system and global config, disables hooks and fsmonitor, allows only the
transports the caller names, and gets the installation token through an in-memory credential
helper reading an environment variable: the token is in no file, no remote URL and no command
line. The session's workspace and the repository cache both run git through here.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from jobs.common.redact import redactor

_PASSTHROUGH_ENV = (
    "PATH",
    "LANG",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "GIT_SSL_CAINFO",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
)
# The transports git may use: GitHub's, over HTTPS (http for a test's stand-in); a local run
# reads its checkout over the file transport and may use nothing else.
REMOTE_TRANSPORTS = ("http", "https")
LOCAL_TRANSPORTS = ("file",)
_TOKEN_VAR = "CLAUDECLUSTER_GIT_TOKEN"
_CREDENTIAL_HELPER = (
    '!f() { test "$1" = get || exit 0; '
    f'echo username=x-access-token; echo "password=${_TOKEN_VAR}"; }}; f'
)


class GitError(RuntimeError):
    """A git command failed; the message is redacted and says which step."""


@dataclass(frozen=True)
class SafeGit:
    home: Path  # an empty directory of the worker's: git's HOME
    token: str = ""
    transports: tuple[str, ...] = REMOTE_TRANSPORTS

    def run(
        self,
        *args: str,
        where: tuple[str, ...] = (),
        check: bool = True,
        input: str | None = None,
        env: dict[str, str] | None = None,
        config: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """`git *where *args`; `where` names the repository (`--git-dir …`), `config` adds
        settings of the caller's on top of the safety ones."""
        settings = {
            "core.hooksPath": os.devnull,
            "core.fsmonitor": "false",
            "core.untrackedCache": "false",
            "safe.directory": "*",
            "protocol.allow": "never",
            **{f"protocol.{name}.allow": "always" for name in self.transports},
            "credential.helper": _CREDENTIAL_HELPER,
            **(config or {}),
        }
        full_env = {k: v for k, v in os.environ.items() if k in _PASSTHROUGH_ENV}
        full_env.update(
            HOME=str(self.home),
            GIT_CONFIG_NOSYSTEM="1",
            GIT_CONFIG_GLOBAL=os.devnull,
            GIT_TERMINAL_PROMPT="0",
            LC_ALL="C",
            GIT_CONFIG_COUNT=str(len(settings)),
            **{_TOKEN_VAR: self.token},
            **(env or {}),
        )
        for i, (key, value) in enumerate(settings.items()):
            full_env[f"GIT_CONFIG_KEY_{i}"] = key
            full_env[f"GIT_CONFIG_VALUE_{i}"] = value
        result = subprocess.run(
            ["git", *where, *args],
            env=full_env,
            input=input,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if check and result.returncode != 0:
            raise GitError(redactor(f"git {args[0]} failed: {result.stderr.strip()[-500:]}"))
        return result
