"""The dashboard: the sessions list, a session's page and its Stop button.

What it shows is the worker's history in Redis (jobs/common/history.py); the live stream of a
session page is served on the event loop (app/live.py). Every page needs a signed-in person
(app/signin.py), who sees only the sessions of repositories they can write to; a session
someone may not see is a 404, as if it did not exist.

Stop writes what `/claude stop` writes (app/enqueue.py `request_stop`): the person's login joins
the session's stop requests; the session itself checks that the login may trigger in the
repository (whoever started it may), as it does for a comment, and says who stopped it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from flask import Blueprint, abort, redirect, render_template, request, url_for

from app.signin import Person, check_csrf, message, sign_in, signed_in
from jobs.common.history import STATES, SessionRecord, load_record, recent_records
from jobs.common.queue import stop_requests_key

bp = Blueprint("dashboard", __name__)

PER_PAGE = 25
STOP_REQUEST_TTL = 3600  # as app/enqueue.py's request_stop keeps a stop request


def redis():
    return sign_in().redis


def person_or_login() -> Person:
    person = signed_in()
    if person is None:
        if not sign_in().configured(sign_in().current()):
            abort(
                message(
                    "Sign-in is not set up",
                    "The dashboard signs people in with the GitHub App's OAuth client: set "
                    "GITHUB_CLIENT_ID and GITHUB_CLIENT_SECRET (setup writes them).",
                    503,
                )
            )
        abort(redirect(url_for("signin.login", next=request.full_path.rstrip("?"))))
    return person


def visible(person: Person, session_id: str) -> SessionRecord:
    record = load_record(redis(), session_id) if len(session_id) <= 160 else None
    if record is None or not sign_in().may_see(person, record):
        abort(404)
    return record


def took(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def when(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@bp.after_request
def _not_framed(response):
    # A page with a Stop button inside another site's frame could be clicked through it.
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = "frame-ancestors 'none'"
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.app_template_filter("took")
def _took(seconds: float) -> str:
    return took(seconds)


@bp.app_template_filter("when")
def _when(moment: float) -> str:
    return when(moment)


@bp.get("/sessions")
def sessions():
    person = person_or_login()
    signin = sign_in()
    repo = request.args.get("repo", "").strip()
    state = request.args.get("state", "").strip()
    try:
        page = max(1, int(request.args.get("page", "1")))
    except ValueError:
        page = 1
    records = [r for r in recent_records(redis(), signin.settings) if signin.may_see(person, r)]
    repos = sorted({r.repo for r in records}, key=str.lower)
    shown = [
        r
        for r in records
        if (not repo or r.repo.lower() == repo.lower()) and (not state or r.state == state)
    ]
    pages = max(1, -(-len(shown) // PER_PAGE))
    page = min(page, pages)
    return render_template(
        "sessions.html",
        person=person,
        records=shown[(page - 1) * PER_PAGE : page * PER_PAGE],
        total=len(shown),
        repos=repos,
        states=STATES,
        repo=repo,
        state=state,
        page=page,
        pages=pages,
    )


@bp.get("/sessions/<session_id>")
def session_page(session_id: str):
    person = person_or_login()
    record = visible(person, session_id)
    return render_template(
        "session.html",
        person=person,
        record=record,
        stopping=request.args.get("stop") == "asked",
        now=time.time(),
    )


@bp.post("/sessions/<session_id>/stop")
def stop(session_id: str):
    person = person_or_login()
    check_csrf(person)
    record = visible(person, session_id)
    if record.live:
        key = stop_requests_key(record.id)
        pipe = redis().pipeline()
        pipe.rpush(key, person.login)
        pipe.expire(key, STOP_REQUEST_TTL)
        pipe.execute()
    return redirect(url_for("dashboard.session_page", session_id=record.id, stop="asked"))
