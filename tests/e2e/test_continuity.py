"""Follow-ups continue the session, end to end: the real CLI resumes the thread's transcript.

The scripted model can only answer a follow-up well if the request it gets carries what the
earlier session's model said (`Recalls`): a codeword that is in no file, no diff and no comment
the material holds, only in that earlier turn.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import string
import zlib

from redis import Redis

from jobs.common.continuity import Thread, TranscriptStore
from jobs.common.redact import REDACTED, Redactor
from tests.e2e.conftest import FINAL, INSTALLATION, MODEL_KEY, REPO
from tests.standins.anthropic import Recalls, Text, ToolUse
from tests.standins.github_pulls import NewPull
from tests.support import pull_event_payload, wait_for

OTHER_REPO = "octo-org/continuity-other"
TEST_FILE = "def test_notes():\n    assert open('NOTES.md').read()\n"
FOLLOW_UP = "/claude now also add a test for it"


def open_pull(service, branch: str, repo: str = REPO, number: int | None = None):
    return service.github.add_pull(
        repo,
        NewPull(
            branch,
            title=f"Work on {branch}",
            body="Please help.",
            user_login="octocat",
            files={"README.md": f"# {branch}\n"},
            number=number,
        ),
    )


def first_session(service, number: int, codeword: str, repo: str = REPO) -> int:
    """A session that writes NOTES.md and says `codeword` in its last turn only."""
    service.anthropic.script(
        [
            ToolUse("Write", {"file_path": "/workspace/NOTES.md", "content": "Notes.\n"}),
            Text(f"Wrote NOTES.md. Remember the codeword {codeword}."),
        ]
    )
    assert (
        service.comment(number, "/claude write NOTES.md", repo=repo, pull=True).status_code == 202
    )
    final = service.wait_final(number, repo=repo)
    assert "pushed a commit" in final.body, final.body
    return final.id


def follow_up_script(codeword: str) -> list:
    # Succeeds (writes the test) only with the earlier turn in the conversation.
    return [
        Recalls(
            codeword,
            ToolUse("Write", {"file_path": "/workspace/tests/test_notes.py", "content": TEST_FILE}),
            Text("Which file? I was told nothing about one."),
        ),
        Text("Added tests/test_notes.py."),
    ]


def run_follow_up(service, number: int, body: str, repo: str = REPO):
    """Ask again on the thread; the new session's final comment."""
    seen = {c.id for c in service.tracking_comments(number, repo)}

    def newest():
        return next(
            (
                c
                for c in service.tracking_comments(number, repo)
                if c.id not in seen and FINAL.search(c.body)
            ),
            None,
        )

    assert service.comment(number, body, repo=repo, pull=True).status_code == 202
    return wait_for(newest, 240, what=f"the follow-up's final comment on #{number}")


def saw(service, needle: str) -> bool:
    return any(needle in json.dumps(r.messages) for r in service.anthropic.main_requests())


def thread_key(service, number: int, repo: str = REPO) -> Thread:
    return Thread(INSTALLATION, service.github.repo(repo).id, number)


def test_a_follow_up_continues_the_earlier_conversation(service):
    pr = open_pull(service, "feature/notes")
    first = first_session(service, pr.number, "PELICAN-42")
    service.anthropic.reset()
    service.anthropic.script(follow_up_script("PELICAN-42"))

    final = run_follow_up(service, pr.number, FOLLOW_UP)

    assert "🔁 Continued the [earlier session]" in final.body, final.body
    assert f"#issuecomment-{first})" in final.body, "the note links the earlier session's comment"
    assert saw(service, "PELICAN-42"), "the resumed conversation carries the earlier turn"
    assert service.github.read_file(REPO, "feature/notes", "tests/test_notes.py") == TEST_FILE
    # What is kept holds no secret: no model key, session key or token of any known shape.
    kept = TranscriptStore(Redis.from_url(service.redis_url), 1 << 24, 14)
    text = kept.find(thread_key(service, pr.number)).transcript.decode()
    assert "PELICAN-42" in text and MODEL_KEY not in text
    assert Redactor()(text) == text, "a secret-shaped string was kept"


def test_a_secret_said_in_the_conversation_is_redacted_before_it_is_kept(service):
    token = "ghp_" + "".join(secrets.choice(string.ascii_letters) for _ in range(36))
    pr = open_pull(service, "feature/leaky")
    first_session(service, pr.number, f"EGRET-1 and the token {token}")
    kept = TranscriptStore(Redis.from_url(service.redis_url), 1 << 24, 14)
    text = kept.find(thread_key(service, pr.number)).transcript.decode()
    assert token not in text and f"the token {REDACTED}" in text
    service.anthropic.reset()
    service.anthropic.script(follow_up_script("EGRET-1"))

    final = run_follow_up(service, pr.number, FOLLOW_UP)

    assert "🔁 Continued" in final.body, final.body
    assert saw(service, f"EGRET-1 and the token {REDACTED}") and not saw(service, token)


def test_a_corrupt_transcript_starts_fresh_and_says_so(service):
    pr = open_pull(service, "feature/corrupt")
    first_session(service, pr.number, "HERON-7")
    redis = Redis.from_url(service.redis_url)
    key = thread_key(service, pr.number).key
    assert redis.exists(key), "the first session's transcript was kept"
    redis.hset(key, "transcript", zlib.compress(b"{not json\n"))
    service.anthropic.reset()
    service.anthropic.script([Text("Started over.")])

    final = run_follow_up(service, pr.number, FOLLOW_UP)

    assert "🆕 Started fresh: the transcript of the [earlier session]" in final.body, final.body
    assert "line 1 of the transcript is not JSON" in final.body
    assert not saw(service, "HERON-7")


def test_a_transcript_the_cli_will_not_resume_starts_fresh_and_says_so(service):
    pr = open_pull(service, "feature/unresumable")
    first_session(service, pr.number, "GANNET-5")
    redis = Redis.from_url(service.redis_url)
    key = thread_key(service, pr.number).key
    cli_session = redis.hget(key, "cli_session").decode()
    # Lines of the right session and kinds, but nothing the CLI can rebuild a conversation from.
    shell = [{"type": kind, "sessionId": cli_session} for kind in ("user", "assistant")]
    redis.hset(key, "transcript", zlib.compress("\n".join(map(json.dumps, shell)).encode()))
    service.anthropic.reset()
    notes = ToolUse("Write", {"file_path": "/workspace/tests/test_notes.py", "content": TEST_FILE})
    service.anthropic.script([notes, Text("Added the test.")])

    final = run_follow_up(service, pr.number, FOLLOW_UP)

    assert "🆕 Started fresh: Claude Code could not resume" in final.body, final.body
    assert "pushed a commit" in final.body
    assert service.github.read_file(REPO, "feature/unresumable", "tests/test_notes.py") == TEST_FILE


def test_a_transcript_never_crosses_repositories_or_threads(service):
    gh = service.github
    with contextlib.suppress(ValueError):  # added by an earlier run of this test
        gh.add_repo(OTHER_REPO, INSTALLATION, files={"README.md": "# other\n"})
    gh.add_collaborator(OTHER_REPO, "octocat", "write")
    pr = open_pull(service, "feature/isolated")
    first_session(service, pr.number, "OSPREY-3")
    # The same number in another repository, and another thread of the same one.
    twin = open_pull(service, "feature/twin", repo=OTHER_REPO, number=pr.number)
    sibling = open_pull(service, "feature/sibling")
    for number, repo in ((twin.number, OTHER_REPO), (sibling.number, REPO)):
        service.anthropic.reset()
        service.anthropic.script(follow_up_script("OSPREY-3"))
        final = run_follow_up(service, number, FOLLOW_UP, repo=repo)
        assert "Continued" not in final.body and "Started fresh" not in final.body, final.body
        assert not saw(service, "OSPREY-3"), f"{repo}#{number} was offered another's transcript"
    assert gh.read_file(OTHER_REPO, "feature/twin", "tests/test_notes.py") is None
    assert gh.read_file(REPO, "feature/sibling", "tests/test_notes.py") is None


def test_fresh_ignores_the_kept_conversation(service):
    pr = open_pull(service, "feature/fresh")
    first_session(service, pr.number, "CORMORANT-9")
    service.anthropic.reset()
    service.anthropic.script(follow_up_script("CORMORANT-9"))

    final = run_follow_up(service, pr.number, "/claude fresh now also add a test for it")

    assert "🆕 Started fresh, as asked" in final.body, final.body
    assert not saw(service, "CORMORANT-9")
    requests = service.anthropic.main_requests()
    assert requests and "now also add a test for it" in requests[0].user_text()
    assert "fresh now" not in requests[0].user_text(), "`fresh` is a command, not the request"


def test_a_link_planted_for_the_transcript_is_not_followed(service, tmp_path):
    canary = tmp_path / "canary.jsonl"
    canary.write_text(json.dumps({"type": "user", "message": "CANARY-HOST-FILE"}) + "\n")
    canary.chmod(0o644)
    pr = open_pull(service, "feature/planted")
    plant = (
        "cd ~/.claude/projects/-workspace && for f in *.jsonl; do"
        f' rm -f "$f" && ln -s {canary} "$f"; done; ls -l'
    )
    service.anthropic.script([ToolUse("Bash", {"command": plant}), Text("Done.")])
    assert service.comment(pr.number, "/claude tidy up", pull=True).status_code == 202
    service.wait_final(pr.number)

    stored = TranscriptStore(Redis.from_url(service.redis_url), 1 << 24, 14)
    kept = stored.find(thread_key(service, pr.number))
    assert kept is not None and kept.transcript is None
    assert kept.problem == "the transcript is not a plain file"
    service.anthropic.reset()
    service.anthropic.script(follow_up_script("CANARY-HOST-FILE"))

    final = run_follow_up(service, pr.number, FOLLOW_UP)

    assert "(the transcript is not a plain file)" in final.body, final.body
    assert not saw(service, "CANARY-HOST-FILE")


def test_a_lone_fresh_is_answered_with_what_it_needs(service):
    number = service.new_issue("Fresh without a request")
    assert service.comment(number, "/claude fresh").status_code == 202
    body = service.wait_final(number).body
    assert "How to ask Claude here" in body
    assert "`fresh` needs a request after it: `/claude fresh <what to do>`" in body
    assert "/claude fresh <what to do>" in body.split("| Command |", 1)[1], "listed in the help"
    assert not service.anthropic.main_requests(), "nothing ran"


def test_closing_the_pull_request_forgets_its_conversation(service):
    pr = open_pull(service, "feature/closing")
    first_session(service, pr.number, "PETREL-8")
    redis = Redis.from_url(service.redis_url)
    key = thread_key(service, pr.number).key
    assert redis.exists(key)
    closed = pull_event_payload("closed", REPO, pr.number, INSTALLATION)
    closed["repository"]["id"] = service.github.repo(REPO).id
    answer = service.deliver(closed, event="pull_request")
    assert (answer.status_code, answer.json()["status"]) == (200, "forgotten")
    assert not redis.exists(key)
    service.anthropic.reset()
    service.anthropic.script(follow_up_script("PETREL-8"))

    final = run_follow_up(service, pr.number, FOLLOW_UP)  # as on a reopened pull request

    assert "Continued" not in final.body and "Started fresh" not in final.body, final.body
    assert not saw(service, "PETREL-8")


def test_a_transcript_of_another_cli_version_starts_fresh_and_says_so(service):
    pr = open_pull(service, "feature/versioned")
    first_session(service, pr.number, "SKUA-4")
    Redis.from_url(service.redis_url).hset(
        thread_key(service, pr.number).key, "cli_version", "0.0.1"
    )
    service.anthropic.reset()
    service.anthropic.script(follow_up_script("SKUA-4"))

    final = run_follow_up(service, pr.number, FOLLOW_UP)

    assert "🆕 Started fresh" in final.body, final.body
    assert "written by Claude Code 0.0.1, this is 2." in final.body
    assert not saw(service, "SKUA-4")
