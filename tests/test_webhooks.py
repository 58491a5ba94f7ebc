"""The front door against a real Redis: verify, decide, enqueue once, answer."""

from __future__ import annotations

import json
import subprocess

import pytest
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from app import create_service
from jobs.common.continuity import transcript_key
from jobs.common.repo_hints import write_hints
from jobs.common.settings import WebSettings
from tests.support import (
    AsgiClient,
    delivery_headers,
    free_port,
    issue_comment_payload,
    npm_package,
    pointed_at,
    sign,
    webhook_example,
)

SECRET = "It's a Secret to Everybody"
REPO = "octo-org/hello-world"


def make_client(redis_url: str) -> AsgiClient:
    settings = WebSettings.parse(GITHUB_WEBHOOK_SECRET=SECRET, REDIS_URL=redis_url)
    return AsgiClient(create_service(settings))


@pytest.fixture
def client(redis_url):
    client = make_client(redis_url)
    yield client
    client.close()


def queued(redis_url: str) -> list[str]:
    return Queue(
        "sessions", connection=Redis.from_url(redis_url), serializer=JSONSerializer
    ).job_ids


def job_kwargs(redis_url: str, job_id: str) -> dict:
    queue = Queue("sessions", connection=Redis.from_url(redis_url), serializer=JSONSerializer)
    return queue.fetch_job(job_id).kwargs


def post(client, event: str, payload, delivery: str | None = None, secret: str = SECRET):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return client.post(
        "/webhooks", data=body, headers=delivery_headers(event, body, secret, delivery)
    )


def trigger(body="/claude add a CONTRIBUTING.md", **kw) -> dict:
    return issue_comment_payload(REPO, 7, body, installation_id=42, **kw)


def test_github_documented_signature_vector():
    # From GitHub's "Validating webhook deliveries" page.
    assert sign(SECRET, b"Hello, World!") == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    )


def test_signature_matches_octokit_reference_implementation():
    body = json.dumps(trigger()).encode()
    methods = npm_package("@octokit/webhooks-methods")
    script = (
        "import(process.argv[1]).then(async m => {"
        " process.stdout.write(await m.sign(process.argv[2], process.argv[3])) })"
    )
    out = subprocess.run(
        ["node", "-e", script, str(methods / "dist-node" / "index.js"), SECRET, body.decode()],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == sign(SECRET, body)


def test_trigger_from_github_example_is_queued_with_plain_values(client, redis_url):
    resp = post(
        client, "issue_comment", trigger("/claude add a CONTRIBUTING.md\nwith tests"), "d-1"
    )
    assert resp.status_code == 202
    assert resp.json == {"status": "queued", "session": "session-d-1"}
    assert queued(redis_url) == ["session-d-1"]
    job = Queue("sessions", connection=Redis.from_url(redis_url), serializer=JSONSerializer)
    kwargs = job.fetch_job("session-d-1").kwargs
    assert kwargs == {
        "delivery_id": "d-1",
        "installation_id": 42,
        "repo": REPO,
        "number": 7,
        "comment_id": 1_000_007,
        "requester": "octocat",
        "requester_id": 583231,
        "instruction": "add a CONTRIBUTING.md\nwith tests",
        "pull": False,
        "mode": "implement",
        "trigger": "comment",
        "review_comment_id": 0,
        "review_id": 0,
        "label": "",
        "triggered_at": "2019-05-15T15:20:21Z",
        "phrase": "/claude",
        "content_id": "comment:7:1000007",
        "head_sha": "",
        "fresh": False,
    }


def test_same_delivery_three_times_is_one_session(client, redis_url):
    answers = [post(client, "issue_comment", trigger(), "same").status_code for _ in range(3)]
    assert answers == [202, 200, 200]
    assert queued(redis_url) == ["session-same"]


@pytest.mark.parametrize(
    "signature", [None, "", "sha256=" + "0" * 64, "sha1=abc", "garbage"], ids=str
)
def test_bad_or_missing_signature_is_401_and_queues_nothing(client, redis_url, signature):
    body = json.dumps(trigger()).encode()
    headers = delivery_headers("issue_comment", body, SECRET)
    if signature is None:
        del headers["X-Hub-Signature-256"]
    else:
        headers["X-Hub-Signature-256"] = signature
    resp = client.post("/webhooks", data=body, headers=headers)
    assert resp.status_code == 401
    assert queued(redis_url) == []


def test_signature_with_another_secret_is_401(client, redis_url):
    assert post(client, "issue_comment", trigger(), secret="not the secret").status_code == 401
    assert queued(redis_url) == []


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b"\xff\xfe", "not JSON"),
    ],
)
def test_malformed_body_is_400(client, redis_url, body, reason):
    resp = post(client, "issue_comment", body)
    assert resp.status_code == 400
    assert reason in resp.json["error"]
    assert queued(redis_url) == []


@pytest.mark.parametrize(
    ("mutate", "missing"),
    [
        (lambda p: p.pop("installation"), "installation"),
        (lambda p: p["issue"].pop("number"), "issue.number"),
        (lambda p: p["comment"]["user"].update(id="seven"), "comment.user.id"),
        (lambda p: p.update(comment="text"), "comment"),
    ],
)
def test_triggering_payload_of_unknown_shape_is_400(client, redis_url, mutate, missing):
    payload = trigger()
    mutate(payload)
    resp = post(client, "issue_comment", payload)
    assert resp.status_code == 400
    assert missing in resp.json["error"]
    assert queued(redis_url) == []


def test_ping_is_200(client):
    resp = post(client, "ping", webhook_example("ping", None))
    assert resp.status_code == 200
    assert resp.json == {"status": "pong"}


@pytest.mark.parametrize(
    ("event", "payload"),
    [
        ("issue_comment", lambda: {**trigger(), "action": "edited"}),
        ("issue_comment", lambda: {**trigger(), "action": "deleted"}),
        ("issues", lambda: webhook_example("issues", "opened")),
        ("star", lambda: {"action": "created"}),
        ("made_up_event", lambda: {}),
    ],
)
def test_unhandled_events_are_ignored_with_2xx(client, redis_url, event, payload):
    resp = post(client, event, payload())
    assert resp.status_code == 200
    assert resp.json["status"] == "ignored"
    assert queued(redis_url) == []


@pytest.mark.parametrize(
    "payload",
    [
        lambda: trigger("please fix this"),
        lambda: trigger("/claudex do it"),
        lambda: trigger("I typed `/claude fix` inline"),
        lambda: trigger("/claude fix", login="helper[bot]", user_type="Bot"),
        lambda: trigger("/claude fix", login="claudecluster[bot]", user_type="User"),
    ],
    ids=["no-command", "other-command", "not-line-start", "bot", "bot-suffix"],
)
def test_comments_that_must_not_trigger(client, redis_url, payload):
    resp = post(client, "issue_comment", payload())
    assert resp.status_code == 200
    assert resp.json["status"] == "ignored"
    assert queued(redis_url) == []


def test_pull_request_conversation_comment_is_queued_as_a_pull_session(client, redis_url):
    payload = trigger("/claude fix the flaky test")
    payload["issue"]["pull_request"] = {"url": "https://api.github.com/repos/o/r/pulls/7"}
    assert post(client, "issue_comment", payload, "pr-1").status_code == 202
    kwargs = job_kwargs(redis_url, "session-pr-1")
    assert (kwargs["pull"], kwargs["number"], kwargs["mode"]) == (True, 7, "implement")


def test_example_without_fields_we_do_not_read_is_accepted(client, redis_url):
    payload = trigger()
    # GHES deliveries and GitHub's own examples lack newer fields; none of them may matter.
    for key in ("archived_at", "labels", "reactions", "performed_via_github_app"):
        payload["issue"].pop(key, None)
        payload["comment"].pop(key, None)
    payload["repository"] = {"full_name": REPO}
    assert post(client, "issue_comment", payload).status_code == 202


def test_oversized_body_is_refused_before_reading(client, redis_url):
    body = b"{" + b" " * (25 * 1024 * 1024) + b"}"
    resp = client.post(
        "/webhooks", data=body, headers=delivery_headers("issue_comment", body, SECRET)
    )
    assert resp.status_code == 413
    assert queued(redis_url) == []


def test_dead_redis_answers_503_and_health_says_so():
    client = make_client(f"redis://127.0.0.1:{free_port()}/0")
    resp = post(client, "issue_comment", trigger())
    assert resp.status_code == 503
    assert client.get("/healthz").status_code == 503


def test_failed_enqueue_releases_the_delivery_claim(redis_url):
    client = make_client(redis_url)
    redis = Redis.from_url(redis_url)
    # A wrong-type key where RQ keeps its queue makes the enqueue itself fail after the claim.
    redis.set("rq:queue:sessions", "not a list")
    assert post(client, "issue_comment", trigger(), "retry-me").status_code == 503
    redis.delete("rq:queue:sessions")
    assert post(client, "issue_comment", trigger(), "retry-me").status_code == 202
    assert queued(redis_url) == ["session-retry-me"]


def test_healthz_reports_redis(client):
    resp = client.get("/healthz")
    assert resp.status_code == 200
    assert resp.json["redis"] == "ok"


def pointed_at_us(payload: dict, sender_type: str = "User") -> dict:
    payload.setdefault("installation", {"id": 42, "node_id": "MDIz"})
    payload["installation"]["id"] = 42
    payload["repository"]["full_name"] = REPO
    payload["sender"]["type"] = sender_type
    return payload


@pytest.mark.parametrize(
    ("body", "mode", "instruction"),
    [
        ("/claude", "help", ""),
        ("/claude help", "help", ""),
        ("/claude stop", "stop", ""),
        ("/claude review", "review", ""),
        (
            "/claude review the error handling\nespecially retries",
            "review",
            "the error handling\nespecially retries",
        ),
        ("/claude stop the tests from flaking", "implement", "stop the tests from flaking"),
        ("/claude fix the flaky test", "implement", "fix the flaky test"),
        ("/claude frobnicate", "help", "frobnicate"),
        ("/claude --dry-run", "help", "--dry-run"),
        ("/claude fix", "implement", "fix"),
        ("/claude fix ci", "fix-ci", ""),
        ("/claude Fix CI: the lint job only", "fix-ci", "the lint job only"),
        ("/claude fix-ci\nkeep the public API", "fix-ci", "keep the public API"),
        ("/claude fix circular imports", "implement", "fix circular imports"),
        ("/claude fix ci-config parsing", "implement", "fix ci-config parsing"),
    ],
)
def test_commands(client, redis_url, body, mode, instruction):
    assert post(client, "issue_comment", trigger(body), "cmd").status_code == 202
    kwargs = job_kwargs(redis_url, "session-cmd")
    assert (kwargs["mode"], kwargs["instruction"]) == (mode, instruction)


@pytest.mark.parametrize(
    ("body", "mode", "instruction", "fresh"),
    [
        ("/claude fresh now add a test", "implement", "now add a test", True),
        ("/claude Fresh\nrewrite it from scratch", "implement", "rewrite it from scratch", True),
        ("/claude fresh review the retries", "review", "the retries", True),
        # A lone `fresh` lacks its request: the worker answers with the help and says so.
        ("/claude fresh", "help", "fresh", True),
        ("/claude freshen the docs", "implement", "freshen the docs", False),
        ("/claude make it fresh", "implement", "make it fresh", False),
    ],
)
def test_fresh_starts_over(client, redis_url, body, mode, instruction, fresh):
    assert post(client, "issue_comment", trigger(body), "fresh").status_code == 202
    kwargs = job_kwargs(redis_url, "session-fresh")
    assert (kwargs["mode"], kwargs["instruction"], kwargs["fresh"]) == (mode, instruction, fresh)


def closed(event: str) -> dict:
    # GitHub's examples have no `issues.closed`: the opened one, closed, has its shape.
    payload = {**webhook_example(event, "opened"), "action": "closed"}
    payload["installation"] = {"id": 42}
    return payload


@pytest.mark.parametrize(("event", "kind"), [("pull_request", "pull_request"), ("issues", "issue")])
def test_a_closed_thread_forgets_its_conversation_and_no_other(client, redis_url, event, kind):
    redis = Redis.from_url(redis_url)
    payload = closed(event)
    repo_id, number = payload["repository"]["id"], payload[kind]["number"]
    kept = [transcript_key(42, repo_id, number), transcript_key(42, repo_id + 1, number)]
    kept += [transcript_key(42, repo_id, number + 1), transcript_key(43, repo_id, number)]
    for key in kept:
        redis.hset(key, "cli_session", "x")

    resp = post(client, event, payload)

    assert (resp.status_code, resp.json["status"]) == (200, "forgotten")
    assert not redis.exists(kept[0])
    assert all(redis.exists(key) for key in kept[1:]), "only the closed thread's goes"
    assert queued(redis_url) == []


def test_a_closed_thread_with_redis_down_is_asked_again():
    client = make_client(f"redis://127.0.0.1:{free_port()}/0")
    assert post(client, "issues", closed("issues")).status_code == 503


def test_inline_review_comment_from_github_example(client, redis_url):
    payload = pointed_at_us(webhook_example("pull_request_review_comment", "created"))
    payload["comment"]["body"] = "/claude rename this variable"
    payload["comment"]["user"]["type"] = "User"
    assert post(client, "pull_request_review_comment", payload, "rc").status_code == 202
    kwargs = job_kwargs(redis_url, "session-rc")
    assert kwargs["trigger"] == "review_comment" and kwargs["pull"] is True
    assert kwargs["review_comment_id"] == payload["comment"]["id"]
    assert kwargs["number"] == payload["pull_request"]["number"]
    assert kwargs["instruction"] == "rename this variable"


def test_submitted_review_from_github_example(client, redis_url):
    payload = pointed_at_us(webhook_example("pull_request_review", "submitted"))
    payload["review"]["body"] = "Looks close.\n/claude address my inline comments"
    payload["review"]["user"]["type"] = "User"
    assert post(client, "pull_request_review", payload, "rv").status_code == 202
    kwargs = job_kwargs(redis_url, "session-rv")
    assert (kwargs["trigger"], kwargs["review_id"]) == ("review", payload["review"]["id"])
    assert kwargs["instruction"] == "address my inline comments"


def test_review_without_command_is_ignored(client, redis_url):
    payload = pointed_at_us(webhook_example("pull_request_review", "submitted"))
    payload["review"]["body"] = None
    assert post(client, "pull_request_review", payload).json["status"] == "ignored"
    assert queued(redis_url) == []


@pytest.mark.parametrize(
    ("event", "thread"), [("pull_request", "pull_request"), ("issues", "issue")]
)
def test_label_events_carry_the_label_for_the_worker_to_map(client, redis_url, event, thread):
    payload = pointed_at_us(webhook_example(event, "labeled"))
    payload["label"]["name"] = "claude"
    assert post(client, event, payload, "lb").status_code == 202
    kwargs = job_kwargs(redis_url, "session-lb")
    assert (kwargs["trigger"], kwargs["label"]) == ("label", "claude")
    assert kwargs["pull"] is (event == "pull_request")
    assert kwargs["number"] == payload[thread]["number"]
    assert kwargs["requester"] == payload["sender"]["login"]


def test_label_added_by_a_bot_is_ignored(client, redis_url):
    payload = pointed_at_us(webhook_example("pull_request", "labeled"), sender_type="Bot")
    assert post(client, "pull_request", payload).json["status"] == "ignored"


def test_new_commits_rerun_only_labelled_pull_requests(client, redis_url):
    payload = pointed_at_us(webhook_example("pull_request", "synchronize"))
    payload["pull_request"]["labels"] = []
    assert post(client, "pull_request", payload).json["status"] == "ignored"
    payload["pull_request"]["labels"] = [{"name": "claude"}, {"name": "bug"}]
    assert post(client, "pull_request", payload, "sync").status_code == 202
    assert job_kwargs(redis_url, "session-sync")["label"] == "bug,claude"
    bot = pointed_at_us(webhook_example("pull_request", "synchronize"), sender_type="Bot")
    bot["pull_request"]["labels"] = [{"name": "claude"}]
    assert post(client, "pull_request", bot).json["status"] == "ignored"


def test_custom_trigger_phrase_known_to_the_front_door(client, redis_url):
    write_hints(Redis.from_url(redis_url), REPO, "@claudebot", ())
    assert post(client, "issue_comment", trigger("/claude fix it")).json["status"] == "ignored"
    assert post(client, "issue_comment", trigger("@claudebot fix it"), "ph").status_code == 202
    kwargs = job_kwargs(redis_url, "session-ph")
    assert (kwargs["phrase"], kwargs["instruction"]) == ("@claudebot", "fix it")


def test_bots_named_in_the_repo_config_may_trigger(client, redis_url):
    bot = {"login": "helper[bot]", "user_type": "Bot"}
    assert post(client, "issue_comment", trigger("/claude fix", **bot)).json["status"] == "ignored"
    write_hints(Redis.from_url(redis_url), REPO, "/claude", ("helper[bot]",))
    assert post(client, "issue_comment", trigger("/claude fix", **bot), "bot").status_code == 202
    other = {"login": "other[bot]", "user_type": "Bot"}
    assert (
        post(client, "issue_comment", trigger("/claude fix", **other)).json["status"] == "ignored"
    )


def test_the_bots_own_tracking_comment_never_triggers(client, redis_url):
    body = "/claude fix\n\n<!-- claudecluster:session session-x state=working -->"
    assert post(client, "issue_comment", trigger(body)).json["status"] == "ignored"
    assert queued(redis_url) == []


def test_push_changing_the_config_on_the_default_branch_refreshes_it(client, redis_url):
    payload = pointed_at_us(webhook_example("push", None))
    payload["repository"]["default_branch"] = "main"
    payload["ref"] = "refs/heads/main"
    payload["commits"] = [{"added": [], "modified": [".github/claude.yml"], "removed": []}]
    assert post(client, "push", payload, "cfg").status_code == 202
    assert job_kwargs(redis_url, "session-cfg")["mode"] == "refresh"
    payload["ref"] = "refs/heads/feature"
    assert post(client, "push", payload).json["status"] == "ignored"
    payload["ref"] = "refs/heads/main"
    payload["commits"] = [{"added": ["README.md"], "modified": [], "removed": []}]
    assert post(client, "push", payload).json["status"] == "ignored"


@pytest.mark.parametrize(
    ("event", "action", "key"),
    [
        ("installation", "created", "repositories"),
        ("installation_repositories", "added", "repositories_added"),
    ],
)
def test_an_installation_queues_one_config_read_per_repository_once(
    client, redis_url, event, action, key
):
    payload = webhook_example(event, action)
    template = payload[key][0]
    payload[key] = [
        {**template, "id": 100 + i, "full_name": f"octo-org/repo-{i}"} for i in range(3)
    ]
    resp = post(client, event, payload, "install-1")
    assert resp.status_code == 202
    sessions = resp.json["sessions"]
    assert sessions == [f"session-install-1-r{100 + i}" for i in range(3)]
    assert queued(redis_url) == sessions
    for i, session in enumerate(sessions):
        kwargs = job_kwargs(redis_url, session)
        assert (kwargs["repo"], kwargs["mode"], kwargs["number"]) == (
            f"octo-org/repo-{i}",
            "refresh",
            0,
        )
        assert kwargs["installation_id"] == payload["installation"]["id"]
    # GitHub's redelivery of the same event queues nothing new.
    assert post(client, event, payload, "install-1").json["sessions"] == sessions
    assert queued(redis_url) == sessions


def test_an_installation_without_repositories_is_ignored(client, redis_url):
    payload = webhook_example("installation_repositories", "added")
    payload["repositories_added"] = []
    resp = post(client, "installation_repositories", payload)
    assert resp.status_code == 200 and resp.json["status"] == "ignored"
    assert queued(redis_url) == []


def test_an_installation_past_the_cap_reads_the_first_hundred(client, redis_url):
    payload = webhook_example("installation", "created")
    template = payload["repositories"][0]
    payload["repositories"] = [
        {**template, "id": i, "full_name": f"big-org/r{i}"} for i in range(1, 251)
    ]
    assert post(client, "installation", payload, "big").status_code == 202
    assert len(queued(redis_url)) == 100


@pytest.mark.parametrize(
    ("event", "action", "edit"),
    [
        ("issue_comment", "created", lambda p: p["comment"].update(body="/claude fix it")),
        (
            "pull_request_review_comment",
            "created",
            lambda p: p["comment"].update(body="/claude fix it"),
        ),
        ("pull_request_review", "submitted", lambda p: p["review"].update(body="/claude fix it")),
        ("issues", "labeled", lambda p: None),
        (
            "pull_request",
            "synchronize",
            lambda p: p["pull_request"].update(labels=[{"name": "claude"}]),
        ),
    ],
)
def test_a_replayed_delivery_under_a_fresh_id_starts_no_second_session(
    client, redis_url, event, action, edit
):
    """A captured, validly signed delivery re-posted with a new X-GitHub-Delivery."""
    payload = pointed_at(webhook_example(event, action), REPO, 1)
    edit(payload)
    for who in ("comment", "review"):
        if who in payload:
            payload[who]["user"].update(login="octocat", type="User")
    payload["sender"].update(login="octocat", type="User")
    first = post(client, event, payload, delivery="11111111-1111-1111-1111-111111111111")
    assert first.status_code == 202, first.json
    replay = post(client, event, payload, delivery="22222222-2222-2222-2222-222222222222")
    assert replay.status_code == 200, replay.json
    assert replay.json == {"status": "duplicate", "session": first.json["session"]}
    assert queued(redis_url) == [first.json["session"]]
    # The same event about something else is no replay.
    other = json.loads(json.dumps(payload))
    for who in ("comment", "review"):
        if who in other:
            other[who]["id"] += 1
    if event == "issues":
        other["issue"]["updated_at"] = "2030-01-01T00:00:00Z"
    if event == "pull_request":
        other["after"] = "f" * 40
    again = post(client, event, other, delivery="33333333-3333-3333-3333-333333333333")
    assert again.status_code == 202, again.json
