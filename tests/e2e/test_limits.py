"""A session past its timeout: stopped, container gone, partial work pushed, comment final."""

from __future__ import annotations

from tests.e2e.conftest import FINAL, SLOW, leftover_containers
from tests.standins.anthropic import Text, ToolUse


def test_timeout_pushes_partial_work_to_a_branch_without_a_pull_request(service):
    gh, api = service.github, service.anthropic
    gh.add_issue(SLOW, 1, "Long job", "", "octocat", 583231)
    api.script(
        [
            ToolUse("Write", {"file_path": "/workspace/HALF.md", "content": "half done\n"}),
            Text("never arrives", delay=120),
        ]
    )
    assert service.comment(1, "/claude do the long job", repo=SLOW).status_code == 202
    final = service.wait_final(1, timeout=180, repo=SLOW)
    assert "state=failed" in final.body and "timed out after 1m 0s" in final.body
    partial = [b for b in gh.branches(SLOW) if b.startswith("claude/issue-1-long-job-partial")]
    assert len(partial) == 1 and f"`{partial[0]}`" in final.body
    assert gh.read_file(SLOW, partial[0], "HALF.md") == "half done\n"
    assert not [p for p in gh.pulls if p.full_name == SLOW]
    assert not leftover_containers(FINAL.search(final.body).group(1))
