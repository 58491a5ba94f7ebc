"""The web process as gunicorn serves it: `gunicorn 'app:create_service()'` (ASGI).

`POST /webhooks` is answered on the event loop by `app.webhooks`, and so is a session's live
stream (`/sessions/<id>/events`, app/live.py: an open stream must not hold one of a2wsgi's
threads); every other path (health, setup, the dashboard) is the Flask app from
`create_app()`, run in a thread by a2wsgi. The split
is for speed: a WSGI request through gunicorn's threads cost this machine 0.9 ms of CPU before
any of our code ran, 0.4 ms on uvicorn's C parser and loop (docs/reliability.md, "Load").
"""

from __future__ import annotations

import json
import logging

from a2wsgi import WSGIMiddleware
from redis.asyncio import Redis

from app.live import BLOCK_MS, Live
from app.metrics import count_delivery
from app.pages import MAX_PAYLOAD, create_app, web_settings
from app.webhooks import Answer, Webhooks
from jobs.common.queue import session_queue
from jobs.common.redact import redactor
from jobs.common.settings import WebSettings

log = logging.getLogger(__name__)

JSON = (b"content-type", b"application/json")


class TooLarge(Exception):
    pass


# What is read and dropped of an oversize body before the 413, so that an ordinary client,
# still sending, reads the answer instead of a reset; past this the connection is simply closed.
DRAIN_LIMIT = 4 * MAX_PAYLOAD


async def drain(scope: dict, receive, limit: int = DRAIN_LIMIT) -> None:
    """Read and drop the rest of the body (not when the client waits for 100-continue: it has
    sent nothing yet, and the 413 tells it not to)."""
    if any(name == b"expect" for name, _ in scope["headers"]):
        return
    size = 0
    while size <= limit:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


async def read_body(scope: dict, receive) -> bytes:
    """The request body, refused past GitHub's 25 MB cap (before reading, when it says so)."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > MAX_PAYLOAD:
            raise TooLarge
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionError("the client went away mid-body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_PAYLOAD:
            raise TooLarge
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


def event_of(scope: dict) -> str:
    for name, value in scope["headers"]:
        if name == b"x-github-event":
            return value.decode("latin-1")
    return ""


def headers_of(scope: dict) -> dict[str, str]:
    # Repeated headers joined with ", ", as WSGI servers hand them to an app.
    headers: dict[str, str] = {}
    for name, value in scope["headers"]:
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers


async def answer(send, reply: Answer, extra: tuple = ()) -> None:
    # json, not orjson: a reason may echo a lone surrogate from the payload; json escapes it.
    body = json.dumps(reply.body).encode()
    headers = [JSON, (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Door:
    """The webhooks' front door, which in setup mode opens once setup has written the secret:
    until then each delivery re-reads the web's settings (its env file), so the running
    service takes the App's credentials without a restart."""

    def __init__(self, settings: WebSettings, redis: Redis, queue) -> None:
        self.settings, self.redis, self.queue = settings, redis, queue
        self.webhooks: Webhooks | None = None

    def open(self) -> Webhooks | None:
        if self.webhooks is None:
            settings = self.settings
            if settings.github_webhook_secret is None:
                settings = WebSettings.parse()
            if settings.github_webhook_secret is not None:
                secret = settings.github_webhook_secret.get_secret_value()
                self.webhooks = Webhooks(secret, self.redis, self.queue, settings.session_timeout)
                redactor.learn(settings)
        return self.webhooks


class Service:
    def __init__(self, door: Door, pages, live: Live) -> None:
        self.door, self.live = door, live
        self.pages = WSGIMiddleware(pages, workers=4)

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
        elif scope["type"] == "http" and scope["path"] == "/webhooks":
            await self.delivery(scope, receive, send)
        elif (session_id := self.live.matches(scope)) is not None:
            await self.live(scope, receive, send, session_id)
        else:
            await self.pages(scope, receive, send)

    async def delivery(self, scope: dict, receive, send) -> None:
        reply, extra = await self.reply(scope, receive)
        if reply is None:
            return  # nobody is left to answer; GitHub records the delivery as failed
        await answer(send, reply, extra)
        count_delivery(event_of(scope), reply.status)

    async def reply(self, scope: dict, receive) -> tuple[Answer | None, tuple]:
        if scope["method"] != "POST":
            return Answer(405, {"error": "POST only"}), ((b"allow", b"POST"),)
        try:
            body = await read_body(scope, receive)
        except TooLarge:
            await drain(scope, receive)
            reply = Answer(413, {"error": "payload over GitHub's 25 MB cap"})
            return reply, ((b"connection", b"close"),)
        except ConnectionError:
            return None, ()
        webhooks = self.door.open()
        if webhooks is None:
            return Answer(503, {"error": "setup is not finished: no webhook secret yet"}), ()
        return await webhooks.receive(headers_of(scope), body), ()

    async def lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.door.redis.aclose()
                await self.live.redis.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_service(settings: WebSettings | None = None) -> Service:
    settings = settings or web_settings()
    pages = create_app(settings)
    # Short timeouts: a dead Redis must turn into a quick 503, not a hung delivery.
    redis = Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
    # The queue only builds jobs (no I/O); the async client writes them.
    queue = session_queue(pages.extensions["redis"], settings.queue_name)
    door = Door(settings, redis, queue)
    door.open()
    # Its own connections: an XREAD BLOCK outlasts the short timeout above.
    streams = Redis.from_url(
        settings.redis_url, socket_connect_timeout=2, socket_timeout=BLOCK_MS / 1000 + 10
    )
    return Service(door, pages, Live(pages, streams))
