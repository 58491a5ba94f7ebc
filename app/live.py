"""`GET /sessions/<id>/events`: a session's live stream, as Server-Sent Events.

Served on the event loop, not through the Flask pages' threads: a stream stays open as long as
the page does, and under a2wsgi each would hold one of its few threads, so a handful of open
pages would starve every other page. Here an open stream is a task blocked in `XREAD BLOCK` on
a Redis connection of its own.

Each event goes out with its stream id as the SSE `id`; a reconnecting browser sends the last
one it saw as `Last-Event-ID` and the stream resumes right after it, with no gap and no repeat.
Once the session has ended and every event is out, the stream says `end` and closes. A stream
also closes after LIFETIME seconds: the browser reconnects at once and resumes, and no proxy's
idle or total timeout ever cuts it somewhere unknown.

Who may read it is decided as for the session's page (app/signin.py): the signed cookie names
the person, whose access GitHub answers; anyone else gets a 404.
"""

from __future__ import annotations

import asyncio
import re
from http.cookies import CookieError, SimpleCookie

from flask import Flask
from redis.asyncio import Redis

from app.signin import SignIn
from jobs.common.history import LIVE_STATES, events_key, load_record, parse_entry, record_key

PATH = re.compile(r"/sessions/([A-Za-z0-9_-]{1,160})/events")
STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
BLOCK_MS = 10_000  # one XREAD's wait; a comment line keeps proxies from closing a quiet stream
BATCH = 200
LIFETIME = 300.0  # seconds one response streams before the browser is told to reconnect
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def resume_from(headers: dict[str, str]) -> str:
    """The stream id after which to send: the browser's Last-Event-ID, else the start."""
    given = headers.get("last-event-id", "").strip()
    return given if STREAM_ID.fullmatch(given) else "0-0"


def frame(ident: str, data: str) -> bytes:
    # The JSON of one event is one line: json.dumps escapes newlines.
    return f"id: {ident}\ndata: {data}\n\n".encode()


class Live:
    def __init__(self, pages: Flask, redis: Redis, lifetime: float = LIFETIME) -> None:
        self.pages, self.redis, self.lifetime = pages, redis, lifetime
        self.sign_in: SignIn = pages.extensions["signin"]

    def matches(self, scope: dict) -> str | None:
        found = PATH.fullmatch(scope["path"]) if scope["type"] == "http" else None
        return found.group(1) if found else None

    def _allowed(self, cookies: str, session_id: str) -> bool:
        """Whether the cookie's person may see the session (blocking: run in a thread)."""
        try:
            jar = SimpleCookie(cookies)
        except CookieError:
            return False
        name = self.pages.config["SESSION_COOKIE_NAME"]
        if name not in jar:
            return False
        serializer = self.pages.session_interface.get_signing_serializer(self.pages)
        if serializer is None:  # no OAuth client yet: nobody is signed in
            return False
        max_age = int(self.pages.permanent_session_lifetime.total_seconds())
        try:
            data = serializer.loads(jar[name].value, max_age=max_age)
        except Exception:  # a forged, expired or foreign cookie: nobody
            return False
        person = self.sign_in.person(data.get("sid") if isinstance(data, dict) else None)
        record = load_record(self.sign_in.redis, session_id)
        return person is not None and record is not None and self.sign_in.may_see(person, record)

    async def __call__(self, scope: dict, receive, send, session_id: str) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if scope["method"] != "GET":
            await _plain(send, 405, b"GET only")
            return
        if not await asyncio.to_thread(self._allowed, headers.get("cookie", ""), session_id):
            await _plain(send, 404, b"Not Found")
            return
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        gone = asyncio.create_task(_disconnected(receive))
        try:
            await self._stream(send, session_id, resume_from(headers), gone)
        finally:
            gone.cancel()

    async def _stream(self, send, session_id: str, last: str, gone: asyncio.Task) -> None:
        key = events_key(session_id)
        await send({"type": "http.response.body", "body": b"retry: 1000\n\n", "more_body": True})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.lifetime
        while not gone.done() and loop.time() < deadline:
            block = max(1, min(BLOCK_MS, int((deadline - loop.time()) * 1000)))
            read = asyncio.create_task(self.redis.xread({key: last}, count=BATCH, block=block))
            await asyncio.wait({read, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not read.done():
                read.cancel()
                return
            chunks, ended = [], False
            for _stream, entries in read.result() or []:
                for entry_id, fields in entries:
                    last, event = parse_entry(entry_id, fields)
                    ended = ended or event.get("kind") == "end"
                    chunks.append(frame(last, fields.get(b"data", b"{}").decode()))
            if not chunks:
                # Caught up with a session that has ended (a reconnect after its end): done.
                state = await self.redis.hget(record_key(session_id), "state")
                ended = state is None or state.decode() not in LIVE_STATES
                chunks.append(b": still running\n\n")
            if ended:
                chunks.append(b"event: end\ndata: {}\n\n")
            await send({"type": "http.response.body", "body": b"".join(chunks), "more_body": True})
            if ended:
                break
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _disconnected(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _plain(send, status: int, text: bytes) -> None:
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(text)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": text})
