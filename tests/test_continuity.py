"""The thread's kept conversation: the Redis store, and the transcript's way out of a sandbox.

The reading is attacked as a sandbox would: links, a link for the directory, a FIFO, a hard
link, a file too large, lines that are not the CLI's. The e2e side is tests/e2e/test_continuity.py.
"""

from __future__ import annotations

import json
import os
import secrets
import string
import zlib

import pytest
from redis import Redis

from jobs.common.continuity import DAY, Kept, Thread, TranscriptStore
from jobs.common.redact import REDACTED
from jobs.sandbox.conversation import PROJECT, ConversationError, checked, read_out, seed
from jobs.session.continuity import usable

SESSION = "0b6a1c52-3f0e-4c1e-9a57-2f4f1f2b7c11"
OTHER = "9d2f4a10-1111-4c1e-9a57-2f4f1f2b7c11"
VERSION = "2.1.332"
THREAD = Thread(42, 1296269, 7)


def line(kind: str, text: str, session: str = SESSION, version: str = VERSION) -> str:
    return json.dumps(
        {
            "type": kind,
            "sessionId": session,
            "version": version,
            "message": {"role": kind, "content": [{"type": "text", "text": text}]},
        }
    )


def transcript(*extra: str) -> bytes:
    lines = [
        json.dumps({"type": "queue-operation", "sessionId": SESSION}),
        line("user", "add NOTES.md"),
        line("assistant", "Wrote NOTES.md."),
        *extra,
    ]
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture
def store(redis_url):
    return TranscriptStore(Redis.from_url(redis_url), 1 << 20, 14)


# -- the store -----------------------------------------------------------------------------


def test_a_kept_transcript_comes_back_for_its_thread_and_expires(store):
    assert store.keep(THREAD, SESSION, VERSION, "https://example.test/c/1", transcript())
    kept = store.find(THREAD)
    assert kept is not None
    assert (kept.cli_session, kept.cli_version, kept.link) == (
        SESSION,
        VERSION,
        "https://example.test/c/1",
    )
    assert kept.transcript == transcript() and kept.problem == ""
    assert 13 * DAY < store.redis.ttl(THREAD.key) <= 14 * DAY
    # Stored compressed: the raw JSONL is not in Redis as such.
    assert transcript() not in store.redis.hget(THREAD.key, "transcript")


def test_no_other_thread_repository_or_installation_finds_it(store):
    store.keep(THREAD, SESSION, VERSION, "", transcript())
    for other in (Thread(42, 1296269, 8), Thread(42, 1296270, 7), Thread(43, 1296269, 7)):
        assert store.find(other) is None, other
    store.forget(Thread(42, 1296270, 7))
    assert store.find(THREAD) is not None
    store.forget(THREAD)
    assert store.find(THREAD) is None


def test_a_transcript_over_the_limit_is_not_kept(redis_url):
    small = TranscriptStore(Redis.from_url(redis_url), 100, 14)
    assert not small.keep(THREAD, SESSION, VERSION, "", transcript())
    assert small.find(THREAD) is None


def test_a_record_of_why_there_is_none(store):
    store.keep(THREAD, SESSION, VERSION, "", transcript())
    store.keep(THREAD, SESSION, VERSION, "", b"", "the sandbox left no transcript")
    kept = store.find(THREAD)
    assert kept.transcript is None and kept.problem == "the sandbox left no transcript"


def test_corrupt_or_inflating_bytes_in_redis_are_no_transcript(store):
    store.keep(THREAD, SESSION, VERSION, "", transcript())
    store.redis.hset(THREAD.key, "transcript", b"not zlib at all")
    assert store.find(THREAD).transcript is None
    # A small value that inflates past the limit must not grow the worker.
    store.redis.hset(THREAD.key, "transcript", zlib.compress(b"{" * (4 << 20), 9))
    assert store.find(THREAD).transcript is None


def test_no_retention_turns_continuity_off(redis_url):
    assert not TranscriptStore(Redis.from_url(redis_url), 1 << 20, 0).enabled


# -- checking a transcript -------------------------------------------------------------------


def test_a_transcript_of_this_session_passes_as_clean_jsonl():
    clean, redacted = checked(transcript(), SESSION, VERSION)
    assert redacted == 0
    assert [json.loads(x)["type"] for x in clean.decode().splitlines()] == [
        "queue-operation",
        "user",
        "assistant",
    ]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (transcript("{not json"), "line 4 of the transcript is not JSON"),
        (transcript("[1, 2]"), "line 4 of the transcript is not a JSON object"),
        (transcript(line("user", "x", session=OTHER)), "belongs to another CLI session"),
        (transcript(line("user", "x", version="2.0.0")), "another CLI version"),
        (line("user", "only a question").encode(), "holds no conversation"),
        (b"\xff\xfe" + transcript(), "not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
    ],
    ids=["json", "object", "session", "version", "no-answer", "utf8", "deep"],
)
def test_what_is_not_a_transcript_of_this_session_is_refused(data, reason):
    with pytest.raises(ConversationError, match=reason):
        checked(data, SESSION, VERSION)


def test_a_secret_shaped_string_is_redacted_before_it_is_kept():
    token = "ghp_" + "".join(secrets.choice(string.ascii_letters) for _ in range(36))
    clean, redacted = checked(transcript(line("user", f"the token is {token}")), SESSION, VERSION)
    assert redacted == 1
    assert token not in clean.decode()
    texts = [json.loads(x).get("message", {}) for x in clean.decode().splitlines()]
    assert f"the token is {REDACTED}" in json.dumps(texts)


def test_the_stored_copy_is_checked_again_and_must_be_of_this_cli_version():
    kept = Kept(SESSION, VERSION, "", 0.0, transcript())
    assert usable(kept, VERSION) == checked(transcript(), SESSION, VERSION)[0]
    with pytest.raises(ConversationError, match="written by Claude Code 2.1.332, this is 2.2.0"):
        usable(kept, "2.2.0")
    with pytest.raises(ConversationError, match="not JSON"):
        usable(Kept(SESSION, VERSION, "", 0.0, b"{oops\n"), VERSION)
    with pytest.raises(ConversationError, match="corrupt"):
        usable(Kept(SESSION, VERSION, "", 0.0, None), VERSION)


# -- in and out of the sandbox's directory ----------------------------------------------------


def planted(projects, name: str = f"{SESSION}.jsonl"):
    (projects / PROJECT).mkdir(parents=True, exist_ok=True)
    return projects / PROJECT / name


def test_the_transcript_is_read_from_where_the_cli_wrote_it(tmp_path):
    planted(tmp_path).write_bytes(transcript())
    assert read_out(tmp_path, SESSION, 1 << 20) == transcript()


def test_a_planted_link_to_a_host_file_is_not_followed(tmp_path):
    secret = tmp_path / "host-secret"
    secret.write_text(line("assistant", "host-only text"))
    planted(tmp_path / "projects").symlink_to(secret)
    with pytest.raises(ConversationError, match="not a plain file"):
        read_out(tmp_path / "projects", SESSION, 1 << 20)


def test_a_planted_link_for_the_directory_is_not_followed(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / f"{SESSION}.jsonl").write_bytes(transcript())
    (tmp_path / "projects").mkdir()
    (tmp_path / "projects" / PROJECT).symlink_to(elsewhere)
    with pytest.raises(ConversationError, match="not a plain directory"):
        read_out(tmp_path / "projects", SESSION, 1 << 20)


def test_a_fifo_or_a_hard_link_is_not_read(tmp_path):
    os.mkfifo(planted(tmp_path))  # opening it for reading must not wait for a writer
    with pytest.raises(ConversationError, match="not a plain file"):
        read_out(tmp_path, SESSION, 1 << 20)
    outside = tmp_path / "outside"
    outside.write_bytes(transcript())
    planted(tmp_path).unlink()
    os.link(outside, planted(tmp_path))
    with pytest.raises(ConversationError, match="not a plain file"):
        read_out(tmp_path, SESSION, 1 << 20)


def test_a_transcript_over_the_limit_is_not_read_whole(tmp_path):
    planted(tmp_path).write_bytes(transcript() * 100)
    with pytest.raises(ConversationError, match="larger than"):
        read_out(tmp_path, SESSION, 1000)


def test_no_transcript_or_a_forged_session_id(tmp_path):
    with pytest.raises(ConversationError, match="left no transcript"):
        read_out(tmp_path, SESSION, 1 << 20)
    with pytest.raises(ConversationError, match="not the CLI's"):
        read_out(tmp_path, "../../etc/passwd", 1 << 20)


def test_seeding_places_the_transcript_where_the_cli_resumes_it(tmp_path):
    seed(tmp_path, SESSION, transcript())
    assert planted(tmp_path).read_bytes() == transcript()
    assert planted(tmp_path).stat().st_mode & 0o777 == 0o600


def test_seeding_never_writes_through_an_entry_already_there(tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "projects").mkdir()
    (tmp_path / "projects" / PROJECT).symlink_to(target)
    with pytest.raises(FileExistsError):
        seed(tmp_path / "projects", SESSION, transcript())
    assert list(target.iterdir()) == []
    with pytest.raises(ConversationError):
        seed(tmp_path, "not-a-session", transcript())
