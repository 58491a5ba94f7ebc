"""The CLI's session transcript, in and out of a sandbox, never trusted.

The CLI writes its conversation to `$CLAUDE_CONFIG_DIR/projects/<cwd slug>/<session id>.jsonl`
(one JSON object a line; the slug of /workspace is `-workspace`) and `--resume <id>` reads it
back. The container's `projects/` is a per-session directory on the host, empty when the
container is created (jobs/sandbox/container.py `Sandbox.create`); the rest of the config dir
stays a tmpfs. Before the start the worker may seed it with the thread's earlier transcript;
after the container is gone it reads the new one out.

Everything in that directory was the sandbox's to write: the reading opens each step without
following links, takes only a regular file with one link, reads at most the limit, and keeps
the transcript only if every line is a JSON object of this session and this CLI version. Every
string in it is redacted before it leaves this module, so no secret-shaped text is ever kept.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

from jobs.common.redact import REDACTED, redactor

PROJECT = "-workspace"  # the CLI's slug of its cwd, /workspace
SANDBOX_UID = 1000
_SESSION_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class ConversationError(ValueError):
    """Why a transcript cannot be used; the message is fit for the tracking comment."""


def is_cli_session(value: str) -> bool:
    return bool(_SESSION_ID.fullmatch(value))


def seed(projects: Path, cli_session: str, transcript: bytes) -> None:
    """Place `transcript` where `claude --resume <cli_session>` looks, before the sandbox runs.

    `projects` is the fresh directory the container mounts; nothing in it may exist yet."""
    if not is_cli_session(cli_session):
        raise ConversationError("the stored session id is not the CLI's")
    root = os.open(projects, _DIR_FLAGS)
    try:
        os.mkdir(PROJECT, 0o700, dir_fd=root)
        project = os.open(PROJECT, _DIR_FLAGS, dir_fd=root)
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(f"{cli_session}.jsonl", flags, 0o600, dir_fd=project)
            with os.fdopen(fd, "wb") as out:
                out.write(transcript)
            if os.geteuid() == 0:  # the sandbox's user appends to it
                os.chown(f"{cli_session}.jsonl", SANDBOX_UID, SANDBOX_UID, dir_fd=project)
                os.chown(project, SANDBOX_UID, SANDBOX_UID)
        finally:
            os.close(project)
    finally:
        os.close(root)


def read_out(projects: Path, cli_session: str, max_bytes: int) -> bytes:
    """The transcript the sandbox left, read without following anything it planted."""
    if not is_cli_session(cli_session):
        raise ConversationError("the session id is not the CLI's")
    try:
        root = os.open(projects, _DIR_FLAGS)
    except OSError:
        raise ConversationError("the sandbox left no transcript") from None
    try:
        return _read_file(root, cli_session, max_bytes)
    finally:
        os.close(root)


def _read_file(root: int, cli_session: str, max_bytes: int) -> bytes:
    try:
        project = os.open(PROJECT, _DIR_FLAGS, dir_fd=root)
    except FileNotFoundError:
        raise ConversationError("the sandbox left no transcript") from None
    except OSError:
        raise ConversationError("the transcript's directory is not a plain directory") from None
    try:
        try:
            fd = os.open(f"{cli_session}.jsonl", _READ_FLAGS, dir_fd=project)
        except FileNotFoundError:
            raise ConversationError("the sandbox left no transcript") from None
        except OSError:
            raise ConversationError("the transcript is not a plain file") from None
        with os.fdopen(fd, "rb") as file:
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
                raise ConversationError("the transcript is not a plain file")
            data = file.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise ConversationError(f"the transcript is larger than {max_bytes:,} bytes")
        return data
    finally:
        os.close(project)


def checked(data: bytes, cli_session: str, cli_version: str) -> tuple[bytes, int]:
    """`data` as clean JSONL of this CLI session, every string redacted; and how many strings
    had a secret-shaped part. ConversationError when it is not a transcript of that session."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConversationError("the transcript is not UTF-8 text") from None
    lines, redacted, spoke = [], [0], set()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except (ValueError, RecursionError):
            raise ConversationError(f"line {number} of the transcript is not JSON") from None
        if not isinstance(entry, dict):
            raise ConversationError(f"line {number} of the transcript is not a JSON object")
        if entry.get("sessionId", cli_session) != cli_session:
            raise ConversationError("the transcript belongs to another CLI session")
        if cli_version and entry.get("version", cli_version) != cli_version:
            raise ConversationError("the transcript was written by another CLI version")
        if entry.get("type") in ("user", "assistant"):
            spoke.add(entry["type"])
        try:
            lines.append(json.dumps(_scrubbed(entry, redacted), ensure_ascii=False))
        except RecursionError:
            raise ConversationError(f"line {number} of the transcript nests too deep") from None
    if spoke != {"user", "assistant"}:
        raise ConversationError("the transcript holds no conversation")
    return ("\n".join(lines) + "\n").encode(), redacted[0]


def _scrubbed(value: object, count: list[int]) -> object:
    if isinstance(value, str):
        clean = redactor(value)
        if clean != value and REDACTED in clean:
            count[0] += 1
        return clean
    if isinstance(value, list):
        return [_scrubbed(item, count) for item in value]
    if isinstance(value, dict):
        return {_scrubbed(k, count): _scrubbed(v, count) for k, v in value.items()}
    return value
