"""Where a thread's conversation is kept between two sessions: Redis, one key per thread.

A thread is one issue or pull request of one repository of one installation, named by ids (a
renamed repository keeps its transcript, one transferred to another installation does not). The
key holds the CLI's session id, its version, a link to the session that wrote it and the
transcript itself, zlib-compressed; it expires after the retention period and is deleted when
the issue or pull request closes (app/triggers.py, web side, hence plain Redis here). Workers on
several hosts share it, which a directory on one host could not offer.

What goes in has already been read safely out of the sandbox, checked and redacted
(jobs/sandbox/conversation.py); what comes out is checked again before any sandbox sees it.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass

from redis import Redis

PREFIX = "claudecluster:transcript"
DAY = 24 * 3600


@dataclass(frozen=True)
class Thread:
    installation_id: int
    repo_id: int
    number: int

    @property
    def key(self) -> str:
        return transcript_key(self.installation_id, self.repo_id, self.number)


def transcript_key(installation_id: int, repo_id: int, number: int) -> str:
    return f"{PREFIX}:{int(installation_id)}:{int(repo_id)}:{int(number)}"


@dataclass(frozen=True)
class Kept:
    """One thread's last conversation, as the next session finds it."""

    cli_session: str  # the CLI's session id (the transcript's file name)
    cli_version: str  # the CLI that wrote it; another version starts fresh
    link: str  # the earlier session's tracking comment (or dashboard page)
    stored_at: float
    transcript: bytes | None  # None: the stored bytes did not decompress (corrupt)
    problem: str = ""  # why the earlier session's transcript was not kept, if it was not


class TranscriptStore:
    def __init__(self, redis: Redis, max_bytes: int, retention_days: int) -> None:
        self.redis = redis
        self.max_bytes = max_bytes
        self.retention = retention_days * DAY

    @property
    def enabled(self) -> bool:
        return self.retention > 0

    def keep(
        self,
        thread: Thread,
        cli_session: str,
        cli_version: str,
        link: str,
        data: bytes,
        problem: str = "",
    ) -> bool:
        """Store `data` (checked JSONL) for `thread`, replacing what was there; with a `problem`,
        only why there is none. False (and nothing stored) when `data` is over the limit."""
        if len(data) > self.max_bytes:
            return False
        fields = {
            "cli_session": cli_session,
            "cli_version": cli_version,
            "link": link,
            "stored_at": str(time.time()),
            "transcript": b"" if problem else zlib.compress(data, 6),
            "problem": problem[:500],
        }
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(thread.key)
            pipe.hset(thread.key, mapping=fields)
            pipe.expire(thread.key, self.retention)
            pipe.execute()
        return True

    def find(self, thread: Thread) -> Kept | None:
        raw = self.redis.hgetall(thread.key)
        if not raw:
            return None
        values = {k.decode(errors="replace"): v for k, v in raw.items()}

        def text(name: str) -> str:
            return values.get(name, b"").decode("utf-8", "replace")

        try:
            # Bounded: a compressed bomb planted in Redis must not grow the worker.
            inflate = zlib.decompressobj()
            transcript: bytes | None = inflate.decompress(
                values.get("transcript", b""), self.max_bytes + 1
            )
            if len(transcript) > self.max_bytes or not inflate.eof:
                transcript = None
        except zlib.error:
            transcript = None
        try:
            stored_at = float(text("stored_at"))
        except ValueError:
            stored_at = 0.0
        problem = text("problem")
        return Kept(
            text("cli_session"),
            text("cli_version"),
            text("link"),
            stored_at,
            None if problem else transcript,
            problem,
        )

    def forget(self, thread: Thread) -> None:
        self.redis.delete(thread.key)
