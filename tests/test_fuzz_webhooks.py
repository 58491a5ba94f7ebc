"""Property-based fuzzing of `POST /webhooks` against a real Redis.

The property, for any request: the answer is never a 5xx (a dead Redis's 503 has its own test in
test_webhooks.py), and a session is queued only when GitHub's (event, action) has a handler in
`app.triggers.HANDLERS` and `decide` says Start for the very payload the app parsed, never for a
bot. Every request is judged by one oracle, `judge`, that works out from the request alone what
the answer and the queue must be, and then checks the response and everything in Redis.

Runs are deterministic (`derandomize=True`, no example database) so CI never flakes; set
`FUZZ_SCALE=10` (or more) locally to multiply every example count for a deeper search.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import os
import re
import uuid
from dataclasses import dataclass

import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import event as tally
from hypothesis import strategies as st
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from app import MAX_PAYLOAD, create_service
from app.payload import PayloadError
from app.triggers import HANDLERS, Clicked, Forget, Ignore, Prime, Start, decide
from jobs.common.queue import active_key, stop_key, stop_requests_key
from jobs.common.settings import WebSettings
from tests.support import AsgiClient, _webhook_examples, sign, webhook_example

SECRET = "It's a Secret to Everybody"
REPO = "octo-org/hello-world"
CONFIG = ".github/claude.yml"

# Every example GitHub publishes, for all of its events (329 payloads over 58 events).
EXAMPLES: list[tuple[str, dict]] = [
    (entry["name"], example) for entry in _webhook_examples() for example in entry["examples"]
]
EVENTS = sorted({name for name, _ in EXAMPLES})
ACTIONS = sorted({a for _, e in EXAMPLES if isinstance(a := e.get("action"), str)})
# The few examples whose (event, action) has a handler: half the mutated cases start from one.
HANDLED = [i for i, (name, e) in enumerate(EXAMPLES) if (name, e.get("action") or "") in HANDLERS]

# What RQ itself accepts as a job id (rq.job.JOB_ID_PATTERN), restated so a change there shows.
RQ_JOB_ID = re.compile(r"[A-Za-z0-9_-]+")

# Who asked, per handled (event, action): a bot there must never get a session. Handlers added
# later (a config refresh on push, say) have no asker and are checked against `decide` only.
ASKER = {
    ("issue_comment", "created"): ("comment", "user"),
    ("pull_request_review_comment", "created"): ("comment", "user"),
    ("pull_request_review", "submitted"): ("review", "user"),
    ("pull_request", "labeled"): ("sender",),
    ("issues", "labeled"): ("sender",),
    ("pull_request", "synchronize"): ("sender",),
}

SCALE = float(os.environ.get("FUZZ_SCALE", "1"))


def fuzz(examples: int):
    return settings(
        max_examples=max(1, int(examples * SCALE)),
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        # No "explain" phase: on a failure it reruns the case ~100 times for little news.
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
        print_blob=True,
    )


# --- the app, its Redis, and the oracle -----------------------------------------------------


@dataclass
class Front:
    client: object
    redis: Redis
    queue: Queue

    def reset(self) -> None:
        self.redis.flushdb()


@pytest.fixture(scope="module")
def front(redis_server):
    # AsgiClient lets an exception out of the app (a server would answer 500): the case fails.
    app = create_service(WebSettings.parse(GITHUB_WEBHOOK_SECRET=SECRET, REDIS_URL=redis_server))
    redis = Redis.from_url(redis_server)
    client = AsgiClient(app)
    yield Front(client, redis, Queue("sessions", connection=redis, serializer=JSONSerializer))
    client.close()
    redis.flushdb()


def as_header(text: str) -> str:
    """A header value as a WSGI server hands it to the app: the bytes read back as latin-1."""
    return text.encode("utf-8", "surrogatepass").decode("latin-1")


def post(
    front: Front,
    body: bytes,
    event: str | None,
    delivery: str | None,
    signature: str | None = "sign",
    extra: list[tuple[str, str]] = (),
    preset: dict[str, str] | None = None,
):
    headers = [("Content-Type", "application/json"), ("User-Agent", "GitHub-Hookshot/fuzz")]
    if signature == "sign":
        signature = sign(SECRET, body)
    for name, value in (
        ("X-GitHub-Event", event),
        ("X-GitHub-Delivery", delivery),
        ("X-Hub-Signature-256", signature),
    ):
        if value is not None:
            headers.append((name, value))
    headers.extend(extra)
    front.reset()
    for key, value in (preset or {}).items():
        front.redis.set(key, value)
    return front.client.post("/webhooks", data=body, headers=headers)


def seen(headers_sent: list[tuple[str, str]], name: str) -> str:
    """What `request.headers.get(name, "")` gives the app: repeated headers joined, as WSGI does."""
    values = [v for k, v in headers_sent if k.lower() == name.lower()]
    return ", ".join(values)


def is_bot(user) -> bool:
    """The oracle's own idea of a bot, written apart from app.triggers.is_bot."""
    if not isinstance(user, dict):
        return False
    login = user.get("login")
    return user.get("type") == "Bot" or (isinstance(login, str) and login.endswith("[bot]"))


def dig(payload, path):
    for key in path:
        if not isinstance(payload, dict):
            return None
        payload = payload.get(key)
    return payload


def as_parsed(body: bytes):
    """The payload as the app documents reading it: orjson's reading where orjson accepts the body
    (integers past 64 bits become floats), the standard library's where it does not."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)


def judge(
    front: Front,
    resp,
    body: bytes,
    event: str,
    delivery: str,
    signed: bool,
    preset: dict[str, str] | None = None,
) -> str:
    """Check one answer and Redis against what the request alone implies; return the outcome.

    `preset` is what the test put in Redis before posting (a running session's marker).
    """
    preset = {k.encode(): v for k, v in (preset or {}).items()}
    status = resp.status_code
    assert status < 500, f"{status} from the front door: {resp.get_data()[:300]!r}"
    jobs = front.queue.job_ids
    keys = sorted(set(front.redis.keys()) - set(preset))

    def nothing_queued(expected_status: int, why: str) -> str:
        assert status == expected_status, f"{why}: wanted {expected_status}, got {status}"
        assert jobs == [], f"{why}, yet queued {jobs}"
        assert keys == [], f"{why}, yet Redis holds {keys[:5]}"
        return why

    if len(body) > MAX_PAYLOAD:
        return nothing_queued(413, "too large")
    if not signed:
        return nothing_queued(401, "unsigned")
    if not event or not delivery:
        return nothing_queued(400, "no event or delivery")
    try:
        payload = as_parsed(body)
    except (ValueError, RecursionError):
        return nothing_queued(400, "not JSON")
    if not isinstance(payload, dict):
        return nothing_queued(400, "not an object")
    if event == "ping":
        return nothing_queued(200, "ping")
    try:
        decision = decide(event, payload, delivery)
    except PayloadError:
        return nothing_queued(400, "malformed")
    if isinstance(decision, Ignore):
        outcome = nothing_queued(200, "ignored")
        assert resp.json["status"] == "ignored"
        return outcome

    if isinstance(decision, Prime):
        # A config read per repository the installation brought; ids repeated in the payload
        # are queued once (the first one's request).
        assert status == 202, f"Prime, yet {status}: {resp.get_data()[:300]!r}"
        sessions = resp.json["sessions"]
        assert resp.json == {"status": "queued", "sessions": sessions}
        assert len(sessions) == len(decision.requests)
        first = dict(zip(reversed(sessions), reversed(decision.requests), strict=True))
        assert jobs == list(dict.fromkeys(sessions)), (jobs, sessions)
        for session in jobs:
            assert RQ_JOB_ID.fullmatch(session) and len(session) <= 100, session
            assert front.queue.fetch_job(session).kwargs == first[session].to_job()
            assert first[session].mode == "refresh" and first[session].number == 0
        return "primed"

    if isinstance(decision, Clicked):
        # A check run's button names a session; the fuzz's Redis holds none to stop or re-run.
        assert resp.json == {"status": "ignored", "reason": "the session is not known"}
        return nothing_queued(200, "a click on an unknown session")

    if isinstance(decision, Forget):
        # A closed thread's kept conversation is deleted; nothing is queued or written.
        assert resp.json == {"status": "forgotten"}
        return nothing_queued(200, "a closed thread forgotten")

    assert isinstance(decision, Start)
    action = payload.get("action")
    key = (event, action if isinstance(action, str) else "")
    assert key in HANDLERS, f"Start for {key}, which has no handler"
    asker = ASKER.get(key)
    assert asker is None or not is_bot(dig(payload, asker)), f"bot queued: {dig(payload, asker)}"
    assert status == 202, f"Start, yet {status}: {resp.get_data()[:300]!r}"
    running = preset.get(active_key(decision.request.thread).encode())
    if running is not None and decision.request.mode == "stop":
        # Stopping a running session asks it (it checks who asked); a stop queued behind it
        # would come too late.
        assert resp.json == {"status": "stopping", "session": running}
        assert jobs == [], f"a stop for a running session queued {jobs}"
        asked = front.redis.lrange(stop_requests_key(running), 0, -1)
        assert asked == [decision.request.requester.encode()]
        assert front.redis.get(stop_key(running)) is None, "only the session decides to stop"
        return "stopping"
    session = resp.json["session"]
    assert resp.json == {"status": "queued", "session": session}
    assert RQ_JOB_ID.fullmatch(session) and session.startswith("session-"), session
    assert len(session) <= 100, f"job id of {len(session)} characters"
    assert jobs == [session], f"wanted exactly {session} queued, got {jobs}"
    job = front.queue.fetch_job(session)
    assert job.kwargs == decision.request.to_job()
    assert job.kwargs["delivery_id"] == delivery
    return "queued"


# --- strategies -----------------------------------------------------------------------------

COMMANDS = [
    "/claude",
    "/claude fix it",
    "/claude stop",
    "/claude review",
    "/claude help",
    "  /claude do\nmore\r\nlines",
    "/claude\x00nul",
    "/CLAUDE fix",
    "<!-- claudecluster:session",
]
SPECIAL = (
    COMMANDS
    + [
        "",
        " ",
        "\x00",
        "a\x00b",
        "\u202e",
        "\u2066\u202eevil\u2069",
        "\ufeff",
        "😀",
        "🤖[bot]",
        "Bot",
        "User",
        "Organization",
        "helper[bot]",
        "octocat",
        "refs/heads/master",
        "refs/heads/main",
        CONFIG,
        "null",
        "0",
        "-1",
        "true",
        "[]",
        "{}",
        "../../x",
        "session-0",  # a check run's external_id naming a session
        "stop",
        "failure",
    ]
    + EVENTS
    + ACTIONS
)


class Huge(str):
    """A ~1 MB string (as JSON, escapes included) that prints as a one-liner in failure reports."""

    def __new__(cls, unit: str, prefix: str = ""):
        self = super().__new__(cls, prefix + unit * (1_000_000 // len(json.dumps(unit))))
        self.recipe = f"{prefix!r} + {unit!r} * {(1_000_000 // len(json.dumps(unit)))}"
        return self

    def __reduce__(self):
        return str, (str(self),)

    def __repr__(self) -> str:
        return f"Huge({self.recipe})"


huge_text = st.builds(
    Huge,
    st.sampled_from(["a", " ", "\u202e", "😀", "\x00", "\n", " \t", "\ud800"]),
    st.sampled_from(["", "/claude ", "/claude fix ", "x[bot]"]),
)
lone_surrogate = st.characters(categories=["Cs"]).map(lambda c: f"a{c}b")
any_text = st.one_of(
    st.sampled_from(SPECIAL),
    st.text(max_size=40),
    st.text(max_size=40).map(lambda t: "/claude " + t),
    lone_surrogate,
)
leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64),
    st.sampled_from([0, -1, 2**63]),
    st.builds(pow, st.just(10), st.just(4000)),  # 4001 digits: under Python's int-string limit
    st.floats(allow_nan=True, allow_infinity=True),
    any_text,
)
json_value = st.recursive(
    leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
    max_leaves=6,
)
user_like = st.fixed_dictionaries(
    {},
    optional={
        "login": json_value,
        "id": st.integers(-5, 2**40) | json_value,
        "type": st.sampled_from(["Bot", "User", "Organization"]) | json_value,
    },
)
# One value in twelve is a ~1 MB string: enough to matter, few enough to keep examples fast.
any_value = st.one_of(*[json_value] * 9, user_like, st.lists(user_like, max_size=2), huge_text)
# For the fields the handlers read, which end up in Redis keys, job fields and replies: odd text
# (lone surrogates, NUL, bidi, emoji, 1 MB) half the time, wrong types or shapes otherwise.
odd_text = st.one_of(
    lone_surrogate,
    lone_surrogate.map(lambda t: f"octo-org/{t}"),
    st.sampled_from(SPECIAL),
    st.text(min_size=1, max_size=20),
)
hot_value = st.one_of(odd_text, odd_text, json_value, user_like, huge_text)

header_text = st.one_of(
    st.sampled_from(
        [
            "",
            " ",
            "../../x",
            "..\\..\\x",
            "/etc/passwd",
            "session-x",
            "a" * 64,
            "a" * 65,
            "72d3162e-cc78-11e3-81ab-4c9367dc0958",
            "*",
            "%2e%2e%2f",
            "x:y",
            "\t",
            "😀",
            "\u202e",
        ]
    ),
    st.text(st.characters(exclude_characters="\r\n\x00"), max_size=80),
    st.integers(1000, 8000).map(lambda n: "d" * n),
).map(as_header)

# Paths the handlers read: mutated far more often than the rest of the payload.
HOT = [
    ("action",),
    ("installation",),
    ("installation", "id"),
    ("repository",),
    ("repository", "full_name"),
    ("repository", "default_branch"),
    ("sender",),
    ("sender", "login"),
    ("sender", "id"),
    ("sender", "type"),
    ("comment",),
    ("comment", "body"),
    ("comment", "id"),
    ("comment", "user"),
    ("comment", "user", "login"),
    ("comment", "user", "id"),
    ("comment", "user", "type"),
    ("comment", "created_at"),
    ("review",),
    ("review", "body"),
    ("review", "id"),
    ("review", "user"),
    ("review", "user", "login"),
    ("review", "user", "type"),
    ("review", "submitted_at"),
    ("issue",),
    ("issue", "number"),
    ("issue", "pull_request"),
    ("pull_request",),
    ("pull_request", "number"),
    ("pull_request", "labels"),
    ("pull_request", "labels", 0),
    ("pull_request", "labels", 0, "name"),
    ("label",),
    ("label", "name"),
    ("ref",),
    ("commits",),
    ("commits", 0),
    ("commits", 0, "added"),
    ("commits", 0, "modified"),
    ("commits", 0, "removed"),
]


def all_paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from all_paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            yield from all_paths(inner, (*prefix, i))


def parent_of(payload, path):
    """The container holding `path`'s last step, or None when the way there is not containers."""
    node = payload
    for key in path[:-1]:
        in_dict = isinstance(node, dict) and key in node
        in_list = isinstance(node, list) and isinstance(key, int) and key < len(node)
        if not (in_dict or in_list):
            return None
        node = node[key]
    return node


def delete(payload, path) -> None:
    parent = parent_of(payload, path)
    if isinstance(parent, dict):
        parent.pop(path[-1], None)
    elif isinstance(parent, list) and isinstance(path[-1], int) and path[-1] < len(parent):
        del parent[path[-1]]


def replace(payload, path, value) -> None:
    parent = parent_of(payload, path)
    if isinstance(parent, dict) and isinstance(path[-1], str):
        parent[path[-1]] = value
    elif isinstance(parent, list) and isinstance(path[-1], int):
        if path[-1] < len(parent):
            parent[path[-1]] = value
        else:
            parent.append(value)


def prime(payload: dict, command: str) -> dict:
    """Point an example at us and make whatever it carries ask for a session, as far as it can."""
    if not isinstance(payload.get("installation"), dict):
        payload["installation"] = {"node_id": "MDIz"}
    payload["installation"]["id"] = 42
    repo = payload.setdefault("repository", {})
    if isinstance(repo, dict):
        repo["full_name"] = REPO
    for key in ("comment", "review"):
        if isinstance(payload.get(key), dict):
            payload[key]["body"] = command
            user = payload[key].setdefault("user", {"login": "octocat", "id": 1})
            if isinstance(user, dict):
                user["type"] = "User"
                user.setdefault("login", "octocat")
    if isinstance(payload.get("sender"), dict):
        payload["sender"].update(type="User", login="octocat")
    if isinstance(payload.get("pull_request"), dict):
        payload["pull_request"]["labels"] = [{"name": "claude"}]
    if "ref" in payload and isinstance(repo, dict):
        repo.setdefault("default_branch", "main")
        payload["ref"] = f"refs/heads/{repo['default_branch']}"
        payload["commits"] = [{"added": [], "modified": [CONFIG], "removed": []}]
    return payload


class Case:
    """One mutated delivery, printed as the recipe that made it rather than as its bytes."""

    def __init__(self, example: str):
        self.example, self.primed, self.steps = example, None, []
        self.event, self.ascii, self.body = "", True, b""
        self.running = False  # a session already runs on the thread the delivery names

    def __repr__(self) -> str:
        return (
            f"Case(example={self.example!r}, primed={self.primed!r}, steps={self.steps!r}, "
            f"event={self.event!r}, ascii={self.ascii}, running={self.running}, "
            f"body=<{len(self.body)} bytes>)"
        )

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(repr(self))


@st.composite
def mutated_delivery(draw) -> Case:
    """A delivery from one of GitHub's examples, primed or not, then mutated."""
    i = draw(st.sampled_from(HANDLED) | st.integers(0, len(EXAMPLES) - 1))
    name, example = EXAMPLES[i]
    case = Case(example=f"EXAMPLES[{i}] ({name}.{example.get('action')})")
    payload = copy.deepcopy(example)
    if draw(st.booleans()):
        case.primed = draw(
            st.sampled_from(COMMANDS)
            | st.just("/claude stop")  # often: with a session running, it must queue nothing
            | any_text.map(lambda t: "/claude " + t)
        )
        prime(payload, case.primed)
    for _ in range(draw(st.integers(0, 5))):
        hot = [p for p in HOT if isinstance(parent_of(payload, p), dict | list)]
        is_hot = bool(hot) and draw(st.integers(0, 3)) > 0
        if is_hot:
            path = draw(st.sampled_from(hot))
        else:
            path = draw(st.sampled_from(list(all_paths(payload))[1:] or [("action",)]))
        if draw(st.integers(0, 3)) == 0:
            case.steps.append(("delete", path))
            delete(payload, path)
        else:
            value = draw(hot_value if is_hot else any_value)
            case.steps.append(("set", path, value))
            replace(payload, path, value)
    event = draw(
        st.sampled_from(["own"] * 6 + ["other", "random", "case"]).flatmap(
            lambda how: {
                "own": st.just(name),
                "other": st.sampled_from(EVENTS),
                "random": header_text,
                "case": st.just(name.upper()),
            }[how]
        )
    )
    # ASCII-escaped JSON, or raw UTF-8 with any lone surrogate written as its 3 bytes (not valid
    # UTF-8, yet json.loads decodes bytes with 'surrogatepass' and accepts it).
    case.event, case.ascii, case.running = event, draw(st.booleans()), draw(st.booleans())
    if case.ascii:
        case.body = json.dumps(payload).encode()
    else:
        case.body = json.dumps(payload, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return case


def not_a_json_object(body: bytes) -> bool:
    try:
        return not isinstance(as_parsed(body), dict)
    except (ValueError, RecursionError):
        return True


def _example_bytes(i: int) -> bytes:
    return json.dumps(EXAMPLES[i % len(EXAMPLES)][1]).encode()


top_level_non_object = st.recursive(
    leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=8,
).filter(lambda v: not isinstance(v, dict))
nested = st.tuples(st.integers(5_000, 200_000), st.sampled_from([("[", "]"), ('{"a":', "}")]))
garbage_bodies = st.one_of(
    st.binary(max_size=2048).filter(not_a_json_object),
    top_level_non_object.map(lambda v: json.dumps(v).encode("utf-8", "surrogatepass")),
    # A real example cut short, or with one byte made invalid.
    st.tuples(st.integers(0, 10_000), st.integers(1, 10**6)).map(
        lambda t: _example_bytes(t[0])[: t[1] % len(_example_bytes(t[0]))]
    ),
    st.tuples(st.integers(0, 10_000), st.integers(0, 10**6)).map(
        lambda t: (lambda b: b[: t[1] % len(b)] + b"\xff" + b[t[1] % len(b) + 1 :])(
            _example_bytes(t[0])
        )
    ),
    st.integers(4301, 20_000).map(lambda n: b"1" * n),  # over Python's int-digits limit
    st.sampled_from([b"", b"NaN", b"-Infinity", b"null", b"\xef\xbb\xbf{}", b"{}" * 2]),
    # Nesting deeper than the JSON parser's recursion allows (GitHub's cap is 25 MB, not depth).
    nested.map(lambda t: (t[1][0] * t[0] + "1" + t[1][1] * t[0]).encode()),
).filter(not_a_json_object)


# --- the properties -------------------------------------------------------------------------


@fuzz(300)
@given(
    body=st.one_of(st.binary(max_size=4096), st.integers(0, 10_000).map(_example_bytes)),
    event=st.sampled_from(EVENTS) | header_text,
    signature=st.one_of(
        st.none(),
        header_text,
        st.text("0123456789abcdef", min_size=64, max_size=64).map(lambda h: "sha256=" + h),
        st.just("wrong secret"),
        st.just("sha1"),
        st.just("other body"),
        st.just("doubled"),
    ),
)
def test_unsigned_or_wrongly_signed_is_401_and_queues_nothing(front, body, event, signature):
    if signature == "wrong secret":
        signature = sign("not " + SECRET, body)
    elif signature == "sha1":  # correct, but SHA-1: refused as too weak
        signature = "sha1=" + hmac.new(SECRET.encode(), body, hashlib.sha1).hexdigest()
    elif signature == "other body":
        signature = sign(SECRET, body + b" ")
    delivery, extra = str(uuid.uuid4()), []
    if signature == "doubled":  # the right signature twice: a WSGI server joins them
        signature, extra = None, [("X-Hub-Signature-256", sign(SECRET, body))] * 2
    resp = post(front, body, event, delivery, signature=signature, extra=extra)
    assert judge(front, resp, body, event, delivery, signed=False) == "unsigned"


@fuzz(300)
@given(body=garbage_bodies, event=st.sampled_from([*EVENTS, "ping"]) | header_text)
def test_signed_garbage_is_400_and_queues_nothing(front, body, event):
    delivery = str(uuid.uuid4())
    resp = post(front, body, event, delivery)
    # Nesting past Python's recursion limit (and orjson's 1,024 levels) is a 400 too, not a 500.
    assert judge(front, resp, body, event, delivery, signed=True) in (
        "not JSON",
        "not an object",
        "no event or delivery",
    )


@fuzz(1000)
@given(case=mutated_delivery())
def test_mutated_github_examples_never_5xx_and_queue_only_what_decide_starts(front, case):
    event, body = case.event, case.body
    delivery_id = str(uuid.uuid4())
    preset = {}
    if case.running:
        try:
            decision = decide(event, as_parsed(body), delivery_id)
        except Exception:  # the app's own answer to this body is judged below
            decision = None
        if isinstance(decision, Start):
            preset[active_key(decision.request.thread)] = "session-already-running"
    resp = post(front, body, event, delivery_id, preset=preset)
    # BUGS (reported, not fixed here): lone surrogates (JSON "\ud800") in strings that reach Redis
    # raise UnicodeEncodeError in redis-py; non-hashable or non-iterable values in a bot's login
    # or in a push's commits raise TypeError: each a 500 where a 400 (or a 200) is right.
    tally(judge(front, resp, body, event, delivery_id, signed=True, preset=preset))


def test_every_github_example_as_is_and_primed(front):
    """Each of GitHub's 329 examples, untouched and pointed at us: no sampling can skip one."""
    outcomes = set()
    for name, example in EXAMPLES:
        for payload in (example, prime(copy.deepcopy(example), "/claude fix the tests")):
            body = json.dumps(payload).encode()
            delivery_id = str(uuid.uuid4())
            resp = post(front, body, name, delivery_id)
            outcomes.add(judge(front, resp, body, name, delivery_id, signed=True))
    # The oracle must have seen every branch, or the examples no longer exercise it.
    assert {"ping", "ignored", "queued", "primed"} <= outcomes, outcomes


def test_stop_while_a_session_runs_flags_it_and_queues_nothing(front):
    body = _trigger_body("/claude stop")
    decision = decide("issue_comment", json.loads(body), "stop-1")
    preset = {active_key(decision.request.thread): "session-already-running"}
    resp = post(front, body, "issue_comment", "stop-1", preset=preset)
    assert judge(front, resp, body, "issue_comment", "stop-1", True, preset) == "stopping"


def _trigger_body(command: str) -> bytes:
    return json.dumps(prime(webhook_example("issue_comment", "created"), command)).encode()


TRIGGER_BODY = _trigger_body("/claude add a CONTRIBUTING.md")


@fuzz(300)
@given(
    deliveries=st.lists(header_text, min_size=1, max_size=1) | st.lists(header_text, max_size=3),
    events=st.just(["issue_comment"])
    | st.lists(st.sampled_from(["issue_comment", "ping", "push"]) | header_text, max_size=2),
)
def test_odd_delivery_and_event_headers_never_5xx_and_job_ids_are_valid(front, deliveries, events):
    extra = [("X-GitHub-Delivery", d) for d in deliveries] + [("X-GitHub-Event", e) for e in events]
    resp = post(front, TRIGGER_BODY, None, None, extra=extra)
    delivery, event = seen(extra, "X-GitHub-Delivery"), seen(extra, "X-GitHub-Event")
    outcome = judge(front, resp, TRIGGER_BODY, event, delivery, signed=True)
    tally(outcome)
    if outcome == "queued":
        # A redelivery of the same delivery is recognised, whatever its id looks like.
        session = resp.json["session"]
        again = front.client.post(
            "/webhooks",
            data=TRIGGER_BODY,
            headers=[("X-Hub-Signature-256", sign(SECRET, TRIGGER_BODY)), *extra],
        )
        assert (again.status_code, again.json) == (200, {"status": "duplicate", "session": session})
        assert front.queue.job_ids == [session]


def test_the_trigger_body_queues(front):
    """The header fuzzing above is only worth something if its body does start a session."""
    resp = post(front, TRIGGER_BODY, "issue_comment", "plain-guid")
    assert judge(front, resp, TRIGGER_BODY, "issue_comment", "plain-guid", True) == "queued"


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_a_body_just_over_githubs_25_mb_cap_is_413(front, signed):
    body = b"{" + b" " * (MAX_PAYLOAD - 1) + b"}"
    assert len(body) == MAX_PAYLOAD + 1
    resp = post(front, body, "issue_comment", "big", signature="sign" if signed else None)
    assert resp.status_code == 413
    assert front.queue.job_ids == [] and front.redis.dbsize() == 0


def test_a_body_of_exactly_25_mb_is_read(front):
    body = b"{" + b" " * (MAX_PAYLOAD - 2) + b"}"
    resp = post(front, body, "issue_comment", "at-cap")
    assert judge(front, resp, body, "issue_comment", "at-cap", signed=True) == "ignored"


# --- what the fuzzing found, pinned as plain reproducers -----------------------------------
# BUG (reported to the lead, app/ left alone): each of these is answered 500 by the front door
# as of this writing; the right answer is a 4xx (or a 2xx when `decide` accepts the payload).
# They stay red until app/ is fixed; the properties above find them too, but less legibly.


def _trigger(mutate) -> bytes:
    payload = prime(webhook_example("issue_comment", "created"), "/claude fix it")
    mutate(payload)
    return json.dumps(payload).encode()


def _push(mutate) -> bytes:
    payload = prime(webhook_example("push", None), "")
    mutate(payload)
    return json.dumps(payload).encode()


CRASHERS = {
    # json.loads raises RecursionError (not a ValueError) past ~1000 levels of nesting.
    "deep-array": ("issue_comment", b"[" * 100_000 + b"]" * 100_000),
    "deep-object": ("ping", b'{"a":' * 5_000 + b"1" + b"}" * 5_000),
    # JSON may escape a lone surrogate; redis-py cannot encode it (UnicodeEncodeError).
    "surrogate-repo": (
        "issue_comment",
        _trigger(lambda p: p["repository"].update(full_name="octo-org/\ud800")),
    ),
    "surrogate-login": (
        "issue_comment",
        _trigger(lambda p: p["comment"]["user"].update(login="\udfff")),
    ),
    # A bot whose login is not hashable: `login not in hints.bots` raises TypeError.
    "bot-login-list": (
        "issue_comment",
        _trigger(lambda p: p["comment"]["user"].update(type="Bot", login=[])),
    ),
    # A push whose commit lists are not lists of strings: TypeError building the path set.
    "push-added-int": ("push", _push(lambda p: p.update(commits=[{"added": 5}]))),
    "push-added-lists": ("push", _push(lambda p: p.update(commits=[{"added": [["x"]]}]))),
}


@pytest.mark.parametrize("name", list(CRASHERS))
def test_payloads_the_fuzzing_found_are_answered_without_a_500(front, name):
    event, body = CRASHERS[name]
    resp = post(front, body, event, f"crasher-{name}")
    judge(front, resp, body, event, f"crasher-{name}", signed=True)
