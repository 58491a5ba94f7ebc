"""The dashboard over HTTP on real parts: sign-in through the GitHub stand-in's OAuth, who sees
which session, the Stop button's CSRF and permission, and the live stream's resume.

The sessions are written by the worker's own history writer; the web runs as gunicorn serves
it (the ASGI service), under uvicorn in a thread.
"""

from __future__ import annotations

import base64
import json
import zlib
from contextlib import ExitStack

import httpx
import pytest

from app.pages import create_app
from jobs.common.history import events_key
from jobs.common.queue import stop_requests_key
from jobs.common.settings import WebSettings
from tests.dashboard_support import ADMIN, MINE, THEIRS, dashboard, sign_in
from tests.standins import openapi


@pytest.fixture
def board(redis_url):
    with dashboard(redis_url) as running:
        yield running


def frames(response: httpx.Response, until: int) -> list[tuple[str, dict]]:
    """(id, event) of the stream's messages, until `until` have come or the stream ends."""
    got: list[tuple[str, dict]] = []
    ident = ""
    for line in response.iter_lines():
        if line.startswith("id: "):
            ident = line[4:]
        elif line.startswith("data: ") and ident:
            got.append((ident, json.loads(line[6:])))
            ident = ""
            if len(got) >= until:
                break
    return got


def test_a_person_sees_only_sessions_of_repositories_they_can_write(board):
    mine, theirs = board.session(MINE), board.session(THEIRS)
    seen = {}
    for login in ("alice", "bob", ADMIN, "mallory"):
        with board.client() as client:
            assert sign_in(board, client, login).headers["location"] == "/sessions"
            page = client.get("/sessions")
            assert page.status_code == 200 and f">{login}<" in page.text
            seen[login] = {s.session_id for s in (mine, theirs) if s.session_id in page.text}
            for s in (mine, theirs):
                status = 200 if s.session_id in seen[login] else 404
                assert client.get(f"/sessions/{s.session_id}").status_code == status
                with client.stream("GET", f"/sessions/{s.session_id}/events") as stream:
                    assert stream.status_code == status
    # alice only reads THEIRS; mallory is no collaborator at all; carol is an admin.
    assert seen == {
        "alice": {mine.session_id},
        "bob": {mine.session_id, theirs.session_id},
        ADMIN: {mine.session_id, theirs.session_id},
        "mallory": set(),
    }
    assert "No sessions to show" in _signed_in_page(board, "mallory", "/sessions")


def _signed_in_page(board, login: str, path: str) -> str:
    with board.client() as client:
        sign_in(board, client, login)
        return client.get(path).text


def test_without_sign_in_pages_send_to_login_and_streams_are_404(board):
    record = board.session(MINE)
    with board.client() as client:
        page = client.get(f"/sessions/{record.session_id}")
        assert page.status_code == 302
        assert page.headers["location"].startswith("/login?next=/sessions/")
        assert client.get(f"/sessions/{record.session_id}/events").status_code == 404
        # A cookie of the right name that this service did not sign is nobody's.
        forged = base64.urlsafe_b64encode(b'{"sid":"x"}').decode().rstrip("=") + ".a.b"
        client.cookies.set("claudecluster_session", forged)
        assert client.get(f"/sessions/{record.session_id}/events").status_code == 404
        assert client.get("/sessions").status_code == 302


def test_the_oauth_round_trip_refuses_a_wrong_state_and_a_replayed_code(board):
    with board.client() as client:
        start = client.get("/login")
        location = httpx.URL(start.headers["location"])
        form = dict(location.params)
        granted = httpx.post(
            f"{board.github.url}/login/oauth/authorize", data={**form, "login": "alice"}
        )
        code = httpx.URL(granted.headers["location"]).params["code"]
        forged = client.get(f"/login/callback?code={code}&state=not-the-state")
        assert forged.status_code == 400 and "state" in forged.text
        # The forged try used up this browser's state: the real one is refused now too.
        assert client.get(f"/login/callback?code={code}&state={form['state']}").status_code == 400
        # Cancel on GitHub's page: back with an error instead of a code.
        state = dict(httpx.URL(client.get("/login").headers["location"]).params)["state"]
        denied = client.get(f"/login/callback?error=access_denied&state={state}")
        assert denied.status_code == 400 and "access_denied" in denied.text
    with board.client() as client:
        assert sign_in(board, client, "alice").status_code == 302
        used = board.github.token_exchanges[-1]["code"]
        client.get("/login")  # a fresh state in this browser, with the used code
        state = dict(httpx.URL(client.get("/login").headers["location"]).params)["state"]
        replay = client.get(f"/login/callback?code={used}&state={state}")
        assert replay.status_code == 502 and "bad_verification_code" in replay.text
        assert "error" in board.github.token_exchanges[-1]


def test_sign_in_returns_to_the_page_asked_for_and_never_to_another_site(board):
    record = board.session(MINE)
    with board.client() as client:
        asked = client.get(f"/sessions/{record.session_id}").headers["location"]
        assert sign_in(board, client, "alice", asked).headers["location"] == (
            f"/sessions/{record.session_id}"
        )
    for elsewhere in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
        with board.client() as client:
            back = sign_in(board, client, "alice", f"/login?next={elsewhere}")
            assert back.headers["location"] == "/sessions", elsewhere


def test_no_token_or_key_reaches_a_page_or_the_cookie(board):
    record = board.session(MINE)
    with board.client() as client:
        sign_in(board, client, "alice")
        token = next(e["access_token"] for e in board.github.token_exchanges if "access_token" in e)
        cookie = client.cookies["claudecluster_session"]
        payload = cookie.split(".")[0]
        raw = base64.urlsafe_b64decode(payload.lstrip(".") + "=" * (-len(payload) % 4))
        decoded = (zlib.decompress(raw) if cookie.startswith(".") else raw).decode()
        assert set(json.loads(decoded)) <= {"sid", "_permanent"}
        secret = board.github.app_client_secret
        for path in ("/sessions", f"/sessions/{record.session_id}", "/login"):
            text = client.get(path).text
            assert token not in text and secret not in text
        assert token not in cookie and token not in decoded and secret not in decoded
        set_cookie = sign_in(board, client, "alice").headers["set-cookie"]
        assert "HttpOnly" in set_cookie and "SameSite=Lax" in set_cookie
        assert "Secure" not in set_cookie  # plain http here; https PUBLIC_URL: see below


def test_the_cookie_is_secure_behind_an_https_public_url(redis_url):
    with (
        dashboard(redis_url, PUBLIC_URL="https://dash.example.test") as board,
        board.client() as client,
    ):
        start = client.get("/login")
        assert "Secure" in start.headers["set-cookie"]
        callback = httpx.URL(start.headers["location"]).params["redirect_uri"]
        assert callback == "https://dash.example.test/login/callback"


def test_stop_needs_the_csrf_token_and_access_then_writes_the_stop_request(board):
    mine, theirs = board.session(MINE), board.session(THEIRS)
    with board.client() as client:
        sign_in(board, client, "alice")
        page = client.get(f"/sessions/{mine.session_id}").text
        csrf = page.split('name="csrf" value="')[1].split('"')[0]
        # Another site's form post carries the cookie (a top-level POST under Lax does not,
        # but an older browser would) and no token: refused.
        attack = client.post(f"/sessions/{mine.session_id}/stop", data={})
        assert attack.status_code == 403
        wrong = client.post(f"/sessions/{mine.session_id}/stop", data={"csrf": "guess"})
        assert wrong.status_code == 403
        assert not board.redis.exists(stop_requests_key(mine.session_id))
        # A session of a repository alice cannot write: as if it did not exist.
        hidden = client.post(f"/sessions/{theirs.session_id}/stop", data={"csrf": csrf})
        assert hidden.status_code == 404
        assert not board.redis.exists(stop_requests_key(theirs.session_id))

        done = client.post(f"/sessions/{mine.session_id}/stop", data={"csrf": csrf})
        assert done.status_code == 302 and done.headers["location"].endswith("?stop=asked")
        # What `/claude stop` writes: the login joins the session's stop requests.
        assert board.redis.lrange(stop_requests_key(mine.session_id), 0, -1) == [b"alice"]
        assert 0 < board.redis.ttl(stop_requests_key(mine.session_id)) <= 3600
        shown = client.get(done.headers["location"])
        assert "Stop requested" in shown.text
        # Not to be framed by another site, where the button could be clicked through.
        assert shown.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in shown.headers["content-security-policy"]
        # Signing out needs the token too, and ends the server-side session.
        assert client.post("/logout", data={}).status_code == 403
        assert client.post("/logout", data={"csrf": csrf}).status_code == 302
        assert client.get("/sessions").status_code == 302


def test_a_reconnect_resumes_the_stream_without_gaps_or_repeats(board):
    record = board.session(MINE)
    for i in range(5):
        record.event("message", text=f"first {i}")
    with board.client() as client:
        sign_in(board, client, "alice")
        url = f"/sessions/{record.session_id}/events"
        with client.stream("GET", url) as stream:
            first = frames(stream, until=4)
        for i in range(5):
            record.event("message", text=f"later {i}")
        record.finish("done", "**done**", {"pull request": "https://example.test/pull/1"})
        resumed_from = first[-1][0]
        with client.stream("GET", url, headers={"Last-Event-ID": resumed_from}) as stream:
            rest = frames(stream, until=1_000)  # to the stream's end
        stored = [i.decode() for i, _ in board.redis.xrange(events_key(record.session_id))]
        got = [i for i, _ in first + rest]
        assert got == stored and len(set(got)) == len(got)
        assert rest[-1][1]["kind"] == "end" and rest[-1][1]["links"]
        # Caught up with a session that has ended: the stream closes at once.
        with client.stream("GET", url, headers={"Last-Event-ID": stored[-1]}) as stream:
            assert frames(stream, until=1) == []
        # A malformed Last-Event-ID starts over rather than failing.
        with client.stream("GET", url, headers={"Last-Event-ID": "0; DROP"}) as stream:
            assert [i for i, _ in frames(stream, until=1)] == stored[:1]


def test_open_streams_do_not_starve_the_other_pages(board):
    """Each stream is a task on the event loop; served by a2wsgi's four threads, five open
    streams would leave no thread for any other page."""
    records = [board.session(MINE) for _ in range(8)]
    with board.client() as client, ExitStack() as streams:
        sign_in(board, client, "alice")
        for record in records:
            stream = streams.enter_context(
                client.stream("GET", f"/sessions/{record.session_id}/events")
            )
            assert frames(stream, until=1)  # open and streaming
        assert client.get("/sessions").status_code == 200
        assert client.get("/healthz").status_code == 200


def test_the_list_is_filtered_and_paged(board):
    done = [board.session(MINE, number=n, state="done") for n in range(30)]
    running = board.session(MINE, number=99)
    with board.client() as client:
        sign_in(board, client, "bob")
        board.session(THEIRS, number=5, state="failed")
        first = client.get("/sessions").text
        assert "page 1 of 2 · 32 sessions" in first and first.count('class="session"') == 25
        second = client.get("/sessions?page=2").text
        assert second.count('class="session"') == 7
        only_running = client.get("/sessions?state=running").text
        assert running.session_id in only_running and done[0].session_id not in only_running
        theirs = client.get(f"/sessions?repo={THEIRS}").text
        assert theirs.count('class="session"') == 1 and "failed" in theirs
        assert "page 1 of 2" in client.get("/sessions?page=oops").text
        assert "page 2 of 2" in client.get("/sessions?page=999").text
        assert "for this filter" in client.get("/sessions?state=done&repo=x/y").text


def test_the_user_token_endpoints_match_githubs_openapi_description(board):
    token = board.github.user_token("alice")
    headers = {"Authorization": f"Bearer {token}"}
    api = board.github.api_url
    me = httpx.get(f"{api}/user", headers=headers)
    assert me.json()["login"] == "alice"
    listed = httpx.get(f"{api}/user/installations/88/repositories?per_page=1", headers=headers)
    body = listed.json()
    assert body["total_count"] == 2 and 'rel="next"' in listed.headers["link"]
    assert body["repositories"][0]["permissions"]["push"] is True
    second = httpx.get(listed.links["next"]["url"], headers=headers).json()["repositories"]
    assert second[0]["full_name"] == THEIRS and second[0]["permissions"]["push"] is False
    assert httpx.get(f"{api}/user/installations/1/repositories", headers=headers).status_code == 404
    assert httpx.get(f"{api}/user").status_code == 401
    assert httpx.get(f"{api}/user", headers={"Authorization": "Bearer ghu_nope"}).status_code == 401
    # A user token is not an installation token: the App's endpoints refuse it.
    assert httpx.get(f"{api}/repos/{MINE}", headers=headers).status_code == 403
    failures = []
    for spec in openapi.SPECS:
        for resp in board.github.responses:
            try:
                openapi.validate_response(
                    resp.method, resp.template, resp.status, resp.body, spec=spec
                )
            except openapi.OpenAPIValidationError as exc:
                failures.append(str(exc))
    assert not failures, failures


def test_the_authorize_page_refuses_unknown_clients_and_foreign_redirects(board):
    authorize = f"{board.github.url}/login/oauth/authorize"
    unknown = httpx.get(authorize, params={"client_id": "Iv23linope", "state": "s"})
    assert unknown.status_code == 400 and "client_id" in unknown.text
    elsewhere = httpx.get(
        authorize,
        params={
            "client_id": board.github.app_client_id,
            "redirect_uri": "https://evil.example/login/callback",
        },
    )
    assert elsewhere.status_code == 400 and "redirect_uri" in elsewhere.text
    wrong_secret = httpx.post(
        f"{board.github.url}/login/oauth/access_token",
        data={"client_id": board.github.app_client_id, "client_secret": "x", "code": "y"},
        headers={"Accept": "application/json"},
    )
    assert wrong_secret.json()["error"] == "incorrect_client_credentials"
    assert not board.github.errors


def test_a_persons_access_is_asked_of_github_once_a_minute_not_per_page(board):
    records = [board.session(MINE) for _ in range(3)]
    with board.client() as client:
        sign_in(board, client, "alice")
        for _ in range(3):
            assert client.get("/sessions").status_code == 200
        for record in records:
            assert client.get(f"/sessions/{record.session_id}").status_code == 200
    asked = [r for r in board.github.requests if r.path.endswith("/88/repositories")]
    assert len(asked) == 1 and asked[0].auth == "user"


def test_before_setup_wrote_the_oauth_client_the_dashboard_says_so(redis_url):
    settings = WebSettings.parse(REDIS_URL=redis_url, GITHUB_WEBHOOK_SECRET="s" * 20)
    client = create_app(settings).test_client()
    for path in ("/sessions", "/login"):
        page = client.get(path)
        assert page.status_code == 503 and "GITHUB_CLIENT_ID" in page.text, path
    assert client.get("/healthz").status_code == 200  # health stays outside the sign-in
