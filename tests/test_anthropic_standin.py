"""The Anthropic stand-in, exercised by the REAL ``claude`` CLI (and a few raw HTTP checks).

The CLI is found through ``$CLAUDE_BIN`` or ``claude`` on PATH; without it these tests
FAIL (install: ``npm install -g @anthropic-ai/claude-code@2.1.332``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.standins.anthropic import AnthropicStandIn, Fail, Structured, Text, ToolUse
from tests.support import NPM

API_KEY = "sk-ant-standin-test-key"
PROMPT = "Please add a CONTRIBUTING.md describing how to contribute."
CLI_TIMEOUT = 120  # seconds for one headless run


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def claude_bin() -> str:
    # scripts/test-deps.sh installs the pinned CLI into .cache/npm.
    local = NPM / ".bin" / "claude"
    path = os.environ.get("CLAUDE_BIN") or (str(local) if local.exists() else None)
    path = path or shutil.which("claude")
    if not path or not os.access(path, os.X_OK):
        pytest.fail(
            "the real Claude Code CLI is required: run `bash scripts/test-deps.sh`, "
            "or set CLAUDE_BIN or put `claude` on PATH",
            pytrace=False,
        )
    return path


@pytest.fixture
def api():
    with AnthropicStandIn() as standin:
        yield standin


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    d = tmp_path / "work"
    d.mkdir()
    return d


@dataclass
class ClaudeRun:
    returncode: int
    events: list[dict[str, Any]]
    stderr: str
    seconds: float

    @property
    def result(self) -> dict[str, Any]:
        results = [e for e in self.events if e.get("type") == "result"]
        assert results, f"no result event; rc={self.returncode} stderr={self.stderr[-2000:]}"
        return results[-1]

    def of_type(self, type_: str, subtype: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if e.get("type") == type_ and (subtype is None or e.get("subtype") == subtype)
        ]


def run_claude(
    claude_bin: str,
    api: AnthropicStandIn,
    cwd: Path,
    home: Path,
    *,
    max_turns: int = 5,
    env: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
) -> ClaudeRun:
    """Run ``claude -p PROMPT`` headless against the stand-in, with its own HOME/config dir;
    `env` overrides the CLI's environment (another ANTHROPIC_API_KEY, more retries)."""
    home.mkdir(parents=True, exist_ok=True)
    full_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "HOME": str(home),
        "CLAUDE_CONFIG_DIR": str(home / ".claude"),
        "ANTHROPIC_BASE_URL": api.url,
        "ANTHROPIC_API_KEY": API_KEY,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        # --dangerously-skip-permissions is refused as root unless the CLI thinks it is
        # sandboxed; in production it runs as a non-root user in a container.
        "IS_SANDBOX": "1",
        # Default is 10 retries with exponential backoff (minutes); keep failures fast.
        "CLAUDE_CODE_MAX_RETRIES": "0",
    }
    full_env.update(env or {})
    cmd = [
        claude_bin,
        "-p",
        PROMPT,
        "--output-format",
        "stream-json",
        "--verbose",
        "--dangerously-skip-permissions",
        "--max-turns",
        str(max_turns),
        *(extra_args or []),
    ]
    started = time.monotonic()
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    seconds = time.monotonic() - started
    events = []
    for line in proc.stdout.splitlines():
        line = line.strip()
        if line:
            try:
                events.append(json.loads(line))
            except ValueError:
                events.append({"type": "<non-json>", "line": line})
    return ClaudeRun(proc.returncode, events, proc.stderr, seconds)


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


# --------------------------------------------------------------------------- real CLI


def test_write_tool_then_text_writes_file(claude_bin, api, workdir, tmp_path):
    target = workdir / "CONTRIBUTING.md"
    content = "# Contributing\n\nOpen a pull request.\n"
    api.script(
        [
            ToolUse("Write", {"file_path": str(target), "content": content}),
            Text("Added the file"),
        ]
    )

    run = run_claude(claude_bin, api, workdir, tmp_path / "home")

    assert target.read_text() == content
    res = run.result
    assert res["is_error"] is False, res
    assert res["result"] == "Added the file"
    assert res["num_turns"] >= 2
    assert res["total_cost_usd"] > 0
    assert run.returncode == 0, run.stderr[-2000:]

    main = api.main_requests()
    assert len(main) == 2
    assert api.remaining_turns == []
    # the second request carries the CLI's successful tool_result for our tool_use id
    tool_use_id = main[1].messages[-2]["content"][0]["id"]
    results = main[1].tool_results()
    assert [r["tool_use_id"] for r in results] == [tool_use_id]
    assert not results[0].get("is_error")


def test_text_only_changes_no_file(claude_bin, api, workdir, tmp_path):
    (workdir / "README.md").write_text("hello\n")
    before = snapshot(workdir)
    api.script([Text("Nothing needs changing.")])

    run = run_claude(claude_bin, api, workdir, tmp_path / "home")

    res = run.result
    assert res["is_error"] is False, res
    assert res["result"] == "Nothing needs changing."
    assert run.returncode == 0
    assert snapshot(workdir) == before
    assert len(api.main_requests()) == 1


def test_several_tool_uses_in_one_turn_and_bash(claude_bin, api, workdir, tmp_path):
    a, b = workdir / "a.txt", workdir / "b.txt"
    api.script(
        [
            [
                Text("Writing two files."),
                ToolUse("Write", {"file_path": str(a), "content": "A\n"}),
                ToolUse("Write", {"file_path": str(b), "content": "B\n"}),
            ],
            ToolUse("Bash", {"command": "cat a.txt b.txt > c.txt", "description": "concat"}),
            ToolUse("Edit", {"file_path": str(a), "old_string": "A", "new_string": "AA"}),
            Text("Three files"),
        ]
    )

    run = run_claude(claude_bin, api, workdir, tmp_path / "home", max_turns=10)

    assert run.result["is_error"] is False, run.result
    assert run.result["result"] == "Three files"
    assert a.read_text() == "AA\n"
    assert b.read_text() == "B\n"
    assert (workdir / "c.txt").read_text() == "A\nB\n"
    main = api.main_requests()
    assert len(main) == 4
    assert len(main[1].tool_results()) >= 2


def test_script_exhausted_answers_done(claude_bin, api, workdir, tmp_path):
    api.script([ToolUse("Bash", {"command": "true", "description": "noop"})])

    run = run_claude(claude_bin, api, workdir, tmp_path / "home")

    assert run.result["is_error"] is False
    assert run.result["result"] == "done"


def test_auth_failure_is_error(claude_bin, api, workdir, tmp_path):
    api.script([Fail(401, "authentication_error", "invalid x-api-key"), Text("never")])

    run = run_claude(claude_bin, api, workdir, tmp_path / "home")

    res = run.result
    assert res["is_error"] is True, res
    assert run.returncode != 0
    assert res["total_cost_usd"] == 0
    assert all(r.status == 401 for r in api.message_requests())
    assert api.remaining_turns  # the Fail stays in place
    assert run.seconds < 30


@pytest.mark.parametrize(
    ("status", "error_type", "message"),
    [(529, "overloaded_error", "Overloaded"), (500, "api_error", "Internal server error")],
)
def test_server_error_fails_fast_without_retries(
    claude_bin, api, workdir, tmp_path, status, error_type, message
):
    api.script([Fail(status, error_type, message)])

    run = run_claude(claude_bin, api, workdir, tmp_path / "home")

    res = run.result
    assert res["is_error"] is True, res
    assert str(status) in res["result"]
    assert run.returncode != 0
    assert len(api.main_requests()) == 1
    assert run.seconds < 30


def test_fail_stays_in_place_across_cli_retries(claude_bin, api, workdir, tmp_path):
    api.script([Fail(529, "overloaded_error", "Overloaded")])

    run = run_claude(
        claude_bin, api, workdir, tmp_path / "home", env={"CLAUDE_CODE_MAX_RETRIES": "2"}
    )

    assert run.result["is_error"] is True
    assert run.returncode != 0
    retries = run.of_type("system", "api_retry")
    assert [e["attempt"] for e in retries] == [1, 2]
    assert all(e["error_status"] == 529 for e in retries)
    assert [r.status for r in api.main_requests()] == [529, 529, 529]


def test_fail_with_times_then_recovers(claude_bin, api, workdir, tmp_path):
    api.script([Fail(529, "overloaded_error", "Overloaded", times=1), Text("Recovered")])

    run = run_claude(
        claude_bin, api, workdir, tmp_path / "home", env={"CLAUDE_CODE_MAX_RETRIES": "1"}
    )

    assert run.result["is_error"] is False, run.result
    assert run.result["result"] == "Recovered"
    assert [r.status for r in api.main_requests()] == [529, 200]


def test_recorded_requests_show_tools_and_prompt(claude_bin, api, workdir, tmp_path):
    api.script([Text("ok")])

    run = run_claude(claude_bin, api, workdir, tmp_path / "home")
    assert run.result["is_error"] is False

    msgs = api.message_requests()
    assert len(msgs) == 1
    (req,) = api.main_requests()
    assert req.method == "POST"
    assert req.path == "/v1/messages"
    assert req.query.get("beta") == ["true"]
    assert req.stream is True
    assert {"Bash", "Edit", "Read", "Write"} <= set(req.tool_names)
    assert PROMPT in req.user_text()
    assert req.api_key == API_KEY
    assert req.headers["anthropic-version"] == "2023-06-01"
    assert req.headers["user-agent"].startswith("claude-cli/")
    # the repr never shows the key
    assert API_KEY not in repr(req)
    assert API_KEY not in repr(api.requests)


def test_expected_api_key_rejects_other_keys(claude_bin, workdir, tmp_path):
    with AnthropicStandIn(expected_api_key="sk-ant-the-real-one") as api:
        api.script([Text("hello")])
        bad = run_claude(
            claude_bin, api, workdir, tmp_path / "h1", env={"ANTHROPIC_API_KEY": "sk-ant-wrong"}
        )
        assert bad.result["is_error"] is True
        assert bad.returncode != 0
        assert {r.kind for r in api.requests} == {"rejected"}
        assert api.remaining_turns == [Text("hello")]

        good = run_claude(
            claude_bin,
            api,
            workdir,
            tmp_path / "h2",
            env={"ANTHROPIC_API_KEY": "sk-ant-the-real-one"},
        )
        assert good.result["is_error"] is False
        assert good.result["result"] == "hello"


def test_subagent_requests_use_their_own_queue(claude_bin, api, workdir, tmp_path):
    api.script(
        [
            ToolUse(
                "Agent",
                {
                    "description": "survey",
                    "prompt": "List the files",
                    "subagent_type": "general-purpose",
                },
            ),
            Text("Main finished"),
        ]
    )
    api.script_subagents([Text("Subagent report")])

    run = run_claude(claude_bin, api, workdir, tmp_path / "home", max_turns=10)

    assert run.result["is_error"] is False, run.result
    sub = api.subagent_requests()
    assert len(sub) == 1
    assert sub[0].headers.get("x-claude-code-agent-id")
    assert "List the files" in sub[0].user_text()
    assert all("x-claude-code-agent-id" not in r.headers for r in api.main_requests())
    # main loop consumed its own turns only (further main requests, if any, get "done")
    assert api.remaining_turns == []
    texts = [
        c.get("text")
        for e in run.of_type("assistant")
        for c in e["message"]["content"]
        if c.get("type") == "text"
    ]
    assert "Main finished" in texts
    assert "Subagent report" in texts


# --------------------------------------------------------------------------- raw HTTP


def _sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for frame in text.split("\n\n"):
        if not frame.strip():
            continue
        lines = dict(line.split(": ", 1) for line in frame.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def _body(stream: bool, tools: bool = True) -> dict[str, Any]:
    b: dict[str, Any] = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": stream,
    }
    if tools:
        b["tools"] = [{"name": "Write", "input_schema": {"type": "object"}}]
    return b


def test_http_streaming_shape_and_keepalive(api):
    api.script([[Text("Let me write."), ToolUse("Write", {"file_path": "/x", "content": "y"})]])
    with httpx.Client(base_url=api.url, headers={"x-api-key": "k"}) as client:
        r1 = client.post("/v1/messages?beta=true", json=_body(True))
        r2 = client.post("/v1/messages", json=_body(False))  # same pooled connection
    assert r1.status_code == 200
    assert api.requests[0].client == api.requests[1].client  # keep-alive: one connection
    assert r1.headers["content-type"].startswith("text/event-stream")
    events = _sse_events(r1.text)
    names = [n for n, _ in events]
    assert names[0] == "message_start" and names[1] == "ping"
    assert names[-2:] == ["message_delta", "message_stop"]
    assert names.count("content_block_start") == names.count("content_block_stop") == 2
    start = events[0][1]["message"]
    assert start["usage"]["input_tokens"] > 0
    text = "".join(
        d["delta"]["text"]
        for n, d in events
        if n == "content_block_delta" and d["delta"]["type"] == "text_delta"
    )
    partial = "".join(
        d["delta"]["partial_json"]
        for n, d in events
        if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta"
    )
    assert text == "Let me write."
    assert json.loads(partial) == {"file_path": "/x", "content": "y"}
    delta = [d for n, d in events if n == "message_delta"][0]
    assert delta["delta"]["stop_reason"] == "tool_use"
    assert delta["usage"]["output_tokens"] > 0

    assert r2.status_code == 200
    msg = r2.json()
    assert msg["type"] == "message" and msg["content"] == [{"type": "text", "text": "done"}]
    assert msg["stop_reason"] == "end_turn"


def test_http_side_requests_do_not_consume_script(api):
    api.script([Text("main answer")])
    with httpx.Client(base_url=api.url) as client:
        side = client.post("/v1/messages", json=_body(False, tools=False))
        probe = client.post("/v1/messages", json=dict(_body(False), max_tokens=1))
        main = client.post("/v1/messages", json=_body(False))
    assert side.json()["content"][0]["text"] == "OK"
    assert probe.json()["content"][0]["text"] == "OK"
    assert main.json()["content"][0]["text"] == "main answer"
    assert [r.kind for r in api.requests] == ["side", "side", "main"]


def test_http_errors_404_count_tokens_and_fail(api):
    api.script([Fail(529, "overloaded_error", "Overloaded")])
    with httpx.Client(base_url=api.url) as client:
        nf = client.get("/v1/models")
        ct = client.post("/v1/messages/count_tokens", json=_body(False))
        f1 = client.post("/v1/messages", json=_body(True))
        f2 = client.post("/v1/messages", json=_body(False, tools=False))
    assert nf.status_code == 404
    assert nf.json()["type"] == "error" and nf.json()["error"]["type"] == "not_found_error"
    assert ct.status_code == 200 and ct.json()["input_tokens"] > 0
    for r in (f1, f2):
        assert r.status_code == 529
        assert r.json() == {
            "type": "error",
            "error": {"type": "overloaded_error", "message": "Overloaded"},
        }


def test_http_bearer_token_and_fixed_port():
    probe = AnthropicStandIn().start()
    port = probe.port
    probe.stop()
    with AnthropicStandIn(port, expected_api_key="secret") as api:
        assert api.url == f"http://127.0.0.1:{port}"
        ok = httpx.post(
            api.url + "/v1/messages", json=_body(False), headers={"authorization": "Bearer secret"}
        )
        bad = httpx.post(api.url + "/v1/messages", json=_body(False), headers={"x-api-key": "no"})
    assert ok.status_code == 200
    assert bad.status_code == 401
    assert bad.json()["error"]["type"] == "authentication_error"


# --------------------------------------------------------------------------- --json-schema

SUMMARY_SCHEMA = {
    "type": "object",
    "properties": {"summary": {"type": "string"}, "score": {"type": "integer"}},
    "required": ["summary"],
    "additionalProperties": False,
}


def _schema_args(schema: dict[str, Any] = SUMMARY_SCHEMA) -> list[str]:
    return ["--json-schema", json.dumps(schema), "--tools", "Read"]


def test_structured_turn_is_the_runs_structured_output(claude_bin, api, workdir, tmp_path):
    answer = {"summary": "Looks good", "score": 3}
    api.script([Structured(answer), Text("never asked for")])

    run = run_claude(claude_bin, api, workdir, tmp_path / "home", extra_args=_schema_args())

    res = run.result
    assert res["is_error"] is False, res
    assert res["subtype"] == "success"
    assert res["structured_output"] == answer
    assert json.loads(res["result"]) == answer
    assert run.returncode == 0
    # the CLI ends the run as soon as the object validates: one request, one turn left over
    (req,) = api.main_requests()
    assert api.remaining_turns == [Text("never asked for")]
    assert req.structured_output_schema == SUMMARY_SCHEMA
    tool = next(t for t in req.tools if t["name"] == "StructuredOutput")
    assert "structured format" in tool["description"]
    assert "tool_choice" not in req.body
    (call,) = [
        c
        for e in run.of_type("assistant")
        for c in e["message"]["content"]
        if c["type"] == "tool_use"
    ]
    assert call["name"] == "StructuredOutput" and call["input"] == answer


def test_no_schema_means_no_structured_output_tool(claude_bin, api, workdir, tmp_path):
    api.script([Text("plain")])
    run = run_claude(claude_bin, api, workdir, tmp_path / "home")
    assert run.result["is_error"] is False
    assert "structured_output" not in run.result
    assert api.main_requests()[0].structured_output_schema is None


def test_structured_invalid_answer_is_retried(claude_bin, api, workdir, tmp_path):
    api.script([Structured({"summary": 3}), Structured({"summary": "fixed"})])

    run = run_claude(claude_bin, api, workdir, tmp_path / "home", extra_args=_schema_args())

    res = run.result
    assert res["is_error"] is False, res
    assert res["structured_output"] == {"summary": "fixed"}
    first, second = api.main_requests()
    (feedback,) = second.tool_results()
    assert feedback["is_error"] is True
    assert "does not match required schema" in str(feedback["content"])
    assert "/summary: must be string" in str(feedback["content"])


def test_structured_invalid_five_times_fails_the_run(claude_bin, api, workdir, tmp_path):
    api.script([Structured({"wrong": 1})] * 6)

    run = run_claude(
        claude_bin, api, workdir, tmp_path / "home", max_turns=10, extra_args=_schema_args()
    )

    res = run.result
    assert res["is_error"] is True, res
    assert res["subtype"] == "error_max_structured_output_retries"
    assert res["terminal_reason"] == "structured_output_retry_exhausted"
    assert "after 5 attempts" in res["errors"][0]
    assert "structured_output" not in res
    assert run.returncode == 1
    assert len(api.main_requests()) == 5
    assert len(api.remaining_turns) == 1


def test_text_answer_gets_one_nudge_then_ends_without_output(claude_bin, api, workdir, tmp_path):
    api.script([Text("I think it is fine"), Text("Still just text"), Text("unused")])

    run = run_claude(claude_bin, api, workdir, tmp_path / "home", extra_args=_schema_args())

    res = run.result
    # a success without the object: callers must check for structured_output themselves
    assert res["is_error"] is False and res["subtype"] == "success", res
    assert "structured_output" not in res
    assert res["result"] == "Still just text"
    first, second = api.main_requests()
    assert "[structured-output-enforce]" in second.user_text()
    assert "StructuredOutput tool" in second.user_text()
    assert api.remaining_turns == [Text("unused")]


def test_http_structured_block_streams_a_structured_output_tool_use(api):
    api.script([[Text("Here it is."), Structured({"summary": "s"}, id="toolu_fixed")]])
    with httpx.Client(base_url=api.url) as client:
        r = client.post("/v1/messages", json=_body(False))
    msg = r.json()
    assert msg["stop_reason"] == "tool_use"
    assert msg["content"][1] == {
        "type": "tool_use",
        "id": "toolu_fixed",
        "name": "StructuredOutput",
        "input": {"summary": "s"},
    }
    with pytest.raises(TypeError):
        api.script([[Structured({}), Fail(500, "api_error", "x")]])
