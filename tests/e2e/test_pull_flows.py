"""Pull request flows, commands and repository config, end to end on real parts."""

from __future__ import annotations

import time

from redis import Redis

from jobs.common.repo_hints import hints_key
from tests.e2e.conftest import (
    BROKEN,
    CONFIGURED,
    CUSTOM,
    FAILING_SETUP,
    FINAL,
    FOLLOW_UPS,
    INSTALLATION,
    REPO,
    REVIEWED,
    leftover_containers,
)
from tests.standins.anthropic import Structured, Text, ToolUse
from tests.standins.github_pulls import NewPull
from tests.support import (
    issue_comment_payload,
    pointed_at,
    pull_event_payload,
    review_comment_payload,
    wait_for,
    webhook_example,
)

GREETING = "def greet():\n    return 'hi'\n"
HELLO = "def greet():\n    return 'hello'\n"


def open_pull(service, branch: str, title: str, **kw):
    return service.github.add_pull(
        REPO,
        NewPull(
            branch,
            title=title,
            body="Please review.",
            user_login="octocat",
            files={"greet.py": GREETING},
            **kw,
        ),
    )


def test_pr_comment_pushes_a_commit_to_the_head_branch(service):
    gh, api = service.github, service.anthropic
    pr = open_pull(service, "feature/greeting", "Add a greeting")
    head_before = gh.branches(REPO)["feature/greeting"]
    api.script(
        [
            ToolUse("Write", {"file_path": "/workspace/greet.py", "content": HELLO}),
            Text("greet() now says hello."),
        ]
    )
    assert service.comment(pr.number, "/claude make greet say hello", pull=True).status_code == 202

    final = service.wait_final(pr.number)
    assert "pushed a commit to `feature/greeting`" in final.body, final.body
    assert gh.read_file(REPO, "feature/greeting", "greet.py") == HELLO
    parent = gh.git(REPO, "rev-parse", "feature/greeting~1").strip()
    assert parent == head_before, "the commit must sit on the head, not replace it"
    assert not [p for p in gh.pushes if p.forced]
    assert not service.pulls_for(pr.number)
    # The model saw the pull request's diff as material.
    assert "greet.py" in api.main_requests()[0].user_text()


def test_inline_review_comment_gets_a_threaded_reply_and_a_commit(service):
    gh, api = service.github, service.anthropic
    pr = open_pull(service, "feature/inline", "Inline change")
    asked = gh.add_review_comment(
        REPO,
        pr.number,
        {"path": "greet.py", "line": 2, "body": "/claude say hello here"},
        "octocat",
    )
    api.script(
        [
            ToolUse("Write", {"file_path": "/workspace/greet.py", "content": HELLO}),
            Text("Changed the greeting on line 2."),
        ]
    )
    payload = review_comment_payload(
        REPO, pr.number, asked.id, "/claude say hello here", INSTALLATION
    )
    assert service.deliver(payload, event="pull_request_review_comment").status_code == 202

    final = service.wait_final(pr.number)
    assert getattr(final, "in_reply_to_id", None) == asked.id, "the reply must be threaded"
    assert "pushed a commit to `feature/inline`" in final.body
    assert gh.read_file(REPO, "feature/inline", "greet.py") == HELLO
    prompt = api.main_requests()[0].user_text()
    # The hunk is quoted material, its place in the attributes (jobs/session/framing.py).
    assert '<diff_hunk path="greet.py" lines="line 2">' in prompt


def test_fork_pull_request_gets_a_follow_up_pull_request_where_the_repo_asks(service):
    gh, api = service.github, service.anthropic
    pr = gh.add_pull(
        FOLLOW_UPS,
        NewPull(
            "patch-1",
            title="Fork change",
            body="Please review.",
            user_login="octocat",
            files={"greet.py": GREETING},
            fork_full_name="stranger/follow-ups",
        ),
    )
    branches_before = gh.branches(FOLLOW_UPS)
    api.script(
        [
            ToolUse("Write", {"file_path": "/workspace/greet.py", "content": HELLO}),
            Text("Fixed the greeting."),
        ]
    )
    answer = service.comment(pr.number, "/claude fix the greeting", repo=FOLLOW_UPS, pull=True)
    assert answer.status_code == 202

    final = service.wait_final(pr.number, repo=FOLLOW_UPS)
    follow_ups = [p for p in gh.pulls if f"Follow-up to #{pr.number}" in (p.body or "")]
    assert len(follow_ups) == 1, final.body
    follow_up = follow_ups[0]
    assert follow_up.head_ref.startswith(f"claude/pr-{pr.number}-")
    assert "comes from a fork" in final.body and f"#{follow_up.number}" in final.body
    assert gh.read_file(FOLLOW_UPS, follow_up.head_ref, "greet.py") == HELLO
    new = set(gh.branches(FOLLOW_UPS)) - set(branches_before)
    assert new == {follow_up.head_ref}, "nothing may be pushed anywhere but the new branch"


def test_stop_during_a_run_pushes_nothing(service):
    gh, api = service.github, service.anthropic
    number = service.new_issue("Slow work")
    branches_before = gh.branches(REPO)
    api.script([Text("never delivered", delay=60)])
    assert service.comment(number, "/claude do the slow thing").status_code == 202
    wait_for(lambda: service.tracking_comments(number), 60, what="the tracking comment")
    wait_for(lambda: api.main_requests(), 60, what="claude to start")
    answer = service.comment(number, "/claude stop")
    assert answer.status_code == 202 and answer.json()["status"] == "stopping"

    final = service.wait_final(number, timeout=60)
    assert "Stopped by @octocat" in final.body and "Nothing was pushed" in final.body
    assert gh.branches(REPO) == branches_before
    assert not service.pulls_for(number)
    assert not leftover_containers(FINAL.search(final.body).group(1))
    api.script([])


def test_invalid_repo_config_runs_nothing_and_names_the_field(service):
    gh = service.github
    number = 1
    gh.add_issue(BROKEN, number, "Anything", "body", "octocat", 583231)
    assert service.comment(number, "/claude do it", repo=BROKEN).status_code == 202
    final = service.wait_final(number, repo=BROKEN)
    assert "`.github/claude.yml` is invalid" in final.body
    assert "max_turns" in final.body
    assert set(gh.branches(BROKEN)) == {"main"}


def test_help_answers_with_usage_for_this_repository(service):
    number = service.new_issue("How do I use this?")
    assert service.comment(number, "/claude help").status_code == 202
    final = service.wait_final(number)
    body = final.body
    assert "/claude review" in body and "/claude stop" in body
    assert "`claude` → implement" in body and "write" in body


def test_empty_command_gets_the_help_too(service):
    number = service.new_issue("Empty")
    assert service.comment(number, "/claude").status_code == 202
    assert "How to ask Claude here" in service.wait_final(number).body


def test_label_on_an_issue_runs_the_issue_flow(service):
    gh, api = service.github, service.anthropic
    number = service.new_issue("Add a NOTICE file", "Create NOTICE with the project name.")
    api.script(
        [
            ToolUse("Write", {"file_path": "/workspace/NOTICE", "content": "hello-world\n"}),
            Text("Added NOTICE."),
        ]
    )
    payload = pointed_at(webhook_example("issues", "labeled"), REPO, INSTALLATION)
    payload["issue"]["number"] = number
    payload["label"]["name"] = "claude"
    assert service.deliver(payload, event="issues").status_code == 202
    service.wait_final(number)
    (pull,) = service.pulls_for(number)
    assert gh.read_file(REPO, pull.head_ref, "NOTICE") == "hello-world\n"
    assert "Create NOTICE" in api.main_requests()[0].user_text()


def test_unmapped_label_does_nothing(service):
    number = service.new_issue("Labelled bug")
    payload = pointed_at(webhook_example("issues", "labeled"), REPO, INSTALLATION)
    payload["issue"]["number"] = number
    payload["label"]["name"] = "bug"
    assert service.deliver(payload, event="issues").status_code == 202
    time.sleep(4)
    assert service.comments(number) == []


REVIEW = {
    "summary": "The greeting changed; consider a docstring.",
    "verdict": "comment",
    "comments": [
        {"path": "greet.py", "line": 2, "body": "Say why the greeting changed."},
        {"path": "README.md", "line": 40, "body": "Not part of the diff: folded."},
    ],
}


def reviews_of(gh, number: int) -> list:
    return [r for r in gh.reviews if r.pull.full_name == REVIEWED and r.pull.number == number]


def test_labelled_pull_request_gets_a_review_with_inline_comments(service):
    gh, api = service.github, service.anthropic
    pr = gh.add_pull(
        REVIEWED,
        NewPull(
            "feature/review-me",
            title="Change greeting",
            body="Please",
            user_login="octocat",
            files={"greet.py": HELLO},
        ),
    )
    heads_before = gh.branches(REVIEWED)
    api.script([Structured(REVIEW)])
    payload = pull_event_payload(
        "labeled",
        REVIEWED,
        pr.number,
        INSTALLATION,
        labels=["claude-review"],
        label="claude-review",
    )
    assert service.deliver(payload, event="pull_request").status_code == 202

    final = service.wait_final(pr.number, repo=REVIEWED)
    assert "reviewed this pull request" in final.body and "1 inline comments" in final.body
    (review,) = reviews_of(gh, pr.number)
    assert "consider a docstring" in review.body and "README.md" in review.body
    inline = [c for c in gh.review_comments if c.review_id == review.id]
    assert [(c.path, c.line, c.side) for c in inline] == [("greet.py", 2, "RIGHT")]
    assert gh.branches(REVIEWED) == heads_before, "a review never pushes"
    (request,) = api.main_requests()
    assert request.structured_output_schema is not None
    assert not {"Write", "Edit", "Bash"} & set(request.tool_names)

    # New commits while the label stays: another review.
    gh.add_commit(REVIEWED, "feature/review-me", {"greet.py": "def greet():\n    return 'hey'\n"})
    api.reset()
    api.script([Structured(REVIEW)])
    payload = pull_event_payload(
        "synchronize", REVIEWED, pr.number, INSTALLATION, labels=["claude-review"]
    )
    assert service.deliver(payload, event="pull_request").status_code == 202
    wait_for(lambda: len(reviews_of(gh, pr.number)) == 2, 120, what="a second review")


def test_review_command_on_a_pull_request(service):
    gh, api = service.github, service.anthropic
    pr = gh.add_pull(
        REVIEWED,
        NewPull(
            "feature/ask-review",
            title="Another",
            body="",
            user_login="octocat",
            files={"greet.py": HELLO},
        ),
    )
    api.script([Structured(REVIEW)])
    body = "/claude review the naming"
    seeded = gh.add_comment(REVIEWED, pr.number, body, "octocat")
    payload = issue_comment_payload(REVIEWED, pr.number, body, INSTALLATION)
    payload["comment"]["id"] = seeded.id
    payload["issue"]["pull_request"] = {"url": "x"}
    assert service.deliver(payload).status_code == 202
    service.wait_final(pr.number, repo=REVIEWED)
    assert len(reviews_of(gh, pr.number)) == 1
    assert "the naming" in api.main_requests()[0].user_text()


def test_repo_config_setup_instructions_prefix_and_drafts_apply(service):
    gh, api = service.github, service.anthropic
    gh.add_issue(CONFIGURED, 1, "Add docs", "Please add docs.", "octocat", 583231)
    api.script(
        [
            ToolUse("Bash", {"command": "cat /tmp/setup-marker"}),
            ToolUse("Write", {"file_path": "/workspace/DOCS.md", "content": "docs\n"}),
            Text("Added DOCS.md. -- the bot"),
        ]
    )
    assert service.comment(1, "/claude add docs", repo=CONFIGURED).status_code == 202
    final = service.wait_final(1, repo=CONFIGURED)
    assert "state=done" in final.body, final.body
    first, second = api.main_requests()[:2]
    assert "Always sign summaries with -- the bot." in first.system_text()
    assert "setup-was-here" in str(second.tool_results())
    (pull,) = [p for p in gh.pulls if p.full_name == CONFIGURED]
    assert pull.head_ref.startswith("bots/claude/issue-1-") and pull.draft


def test_failing_setup_commands_end_the_session_with_their_output(service):
    gh = service.github
    gh.add_issue(FAILING_SETUP, 1, "Anything", "", "octocat", 583231)
    assert service.comment(1, "/claude do it", repo=FAILING_SETUP).status_code == 202
    final = service.wait_final(1, repo=FAILING_SETUP)
    assert "state=failed" in final.body
    assert "setup commands failed" in final.body and "missing tool" in final.body
    assert service.anthropic.main_requests() == []


def test_submitted_review_makes_its_inline_comments_the_task(service):
    gh, api = service.github, service.anthropic
    pr = open_pull(service, "feature/reviewed-by-human", "Reviewed by a human")
    review = gh.add_review(
        REPO,
        pr.number,
        "/claude address my comments",
        "octocat",
        comments=[{"path": "greet.py", "line": 2, "body": "Return 'hello' instead."}],
    )
    api.script(
        [
            ToolUse("Write", {"file_path": "/workspace/greet.py", "content": HELLO}),
            Text("Addressed the review."),
        ]
    )
    payload = pointed_at(webhook_example("pull_request_review", "submitted"), REPO, INSTALLATION)
    payload["pull_request"]["number"] = pr.number
    payload["review"].update(id=review.id, body="/claude address my comments")
    payload["review"]["user"].update(login="octocat", id=583231, type="User")
    assert service.deliver(payload, event="pull_request_review").status_code == 202

    final = service.wait_final(pr.number)
    assert "pushed a commit to `feature/reviewed-by-human`" in final.body
    prompt = api.main_requests()[0].user_text()
    assert "Return 'hello' instead." in prompt
    assert '<review_comment path="greet.py" line="2" review=' in prompt


def test_new_trigger_phrase_works_from_its_first_use(service):
    gh, api = service.github, service.anthropic
    gh.add_repo(CUSTOM, INSTALLATION, files={"README.md": "# custom\n"})
    gh.add_collaborator(CUSTOM, "octocat", "write")
    gh.add_issue(CUSTOM, 1, "Say hi", "", "octocat", 583231)
    sha = gh.add_commit(CUSTOM, "main", {".github/claude.yml": 'trigger: "@claudebot"\n'})
    push = pointed_at(webhook_example("push", None), CUSTOM, INSTALLATION)
    push.update(ref="refs/heads/main", after=sha)
    push["repository"]["default_branch"] = "main"
    push["commits"] = [{"id": sha, "added": [".github/claude.yml"], "modified": [], "removed": []}]
    assert service.deliver(push, event="push").status_code == 202
    redis = Redis.from_url(service.redis_url)
    wait_for(
        lambda: b"@claudebot" in (redis.get(hints_key(CUSTOM)) or b""),
        60,
        what="the refreshed trigger phrase",
    )

    assert service.comment(1, "/claude say hi", repo=CUSTOM).json()["status"] == "ignored"
    api.script([Text("Hi! Nothing to change.")])
    assert service.comment(1, "@claudebot say hi", repo=CUSTOM).status_code == 202
    final = service.wait_final(1, repo=CUSTOM)
    assert "No changes were needed" in final.body


def test_a_new_installations_repositories_know_their_trigger_before_any_push(service):
    gh, api = service.github, service.anthropic
    repo = "octo-org/installed"
    created = gh.add_repo(repo, INSTALLATION, files={".github/claude.yml": 'trigger: "@helper"\n'})
    gh.add_collaborator(repo, "octocat", "write")
    gh.add_issue(repo, 1, "Say hi", "", "octocat", 583231)
    # GitHub's own example of the event, pointed at the stand-in's installation and repository.
    added = webhook_example("installation_repositories", "added")
    added["installation"]["id"] = INSTALLATION
    added["repositories_added"] = [
        {**added["repositories_added"][0], "full_name": repo, "name": "installed", "id": created.id}
    ]
    resp = service.deliver(added, event="installation_repositories")
    assert resp.status_code == 202 and len(resp.json()["sessions"]) == 1, resp.text
    redis = Redis.from_url(service.redis_url)
    wait_for(
        lambda: b"@helper" in (redis.get(hints_key(repo)) or b""),
        60,
        what="the installed repository's trigger phrase",
    )
    again = service.deliver(
        added, event="installation_repositories", delivery=resp.request.headers["X-GitHub-Delivery"]
    )
    assert again.json()["sessions"] == resp.json()["sessions"]  # a redelivery queues nothing

    api.script([Text("Hi! Nothing to change.")])
    assert service.comment(1, "@helper say hi", repo=repo).status_code == 202
    assert "No changes were needed" in service.wait_final(1, repo=repo).body
