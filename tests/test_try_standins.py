"""`python -m tests.standins`, as the README's newcomer starts it: the stand-ins come up on the
ports asked for, print the settings that point the service at them, serve the pages a person
uses (repositories, a new issue, its comment form), and stop cleanly on SIGTERM."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import httpx

from tests.support import ROOT, free_port, wait_for


def test_the_stand_ins_start_print_their_settings_and_serve_pages(tmp_path):
    github_port, model_port, service_port = free_port(), free_port(), free_port()
    out = tmp_path / "out.txt"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.standins",
                "--github-port",
                str(github_port),
                "--model-port",
                str(model_port),
                "--service-port",
                str(service_port),
            ],
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: "Ctrl-C" in out.read_text(), 60, what="the stand-ins' banner")
        text = out.read_text()
        github = f"http://127.0.0.1:{github_port}"
        assert f"GITHUB_URL={github}" in text
        assert f"PUBLIC_URL=http://127.0.0.1:{service_port}" in text
        assert f"ANTHROPIC_BASE_URL=http://127.0.0.1:{model_port}" in text
        index = httpx.get(f"{github}/", timeout=10)
        assert index.status_code == 200 and "octocat/hello" in index.text
        assert "App not installed" in index.text and "open the service&#x27;s /setup" in index.text
        opened = httpx.post(
            f"{github}/octocat/hello/issues/new", data={"title": "Try", "body": "b"}, timeout=10
        )
        assert opened.status_code == 303
        page = httpx.get(f"{github}{opened.headers['Location']}", timeout=10)
        assert re.search(r"<textarea name='body' id='comment'", page.text)
        # A comment where the App is not installed reaches no webhook, and says nothing wrong.
        sent = httpx.post(f"{github}{opened.headers['Location']}", data={"body": "/claude hi"})
        assert sent.status_code == 303
        assert "/claude hi" in httpx.get(f"{github}{opened.headers['Location']}").text
        # The scripted model's first move in any conversation: write HELLO.md.
        ask = {
            "model": "claude-sonnet-5-5",
            "max_tokens": 1024,
            "messages": [{"role": "user", "content": "add a greeting"}],
            "tools": [{"name": "Write", "input_schema": {"type": "object"}}],
        }
        headers = {"x-api-key": "any", "x-claude-code-session-id": "try-1"}
        model = httpx.post(
            f"http://127.0.0.1:{model_port}/v1/messages", json=ask, headers=headers, timeout=10
        )
        (move,) = [b for b in model.json()["content"] if b["type"] == "tool_use"]
        assert move["name"] == "Write" and move["input"]["file_path"] == "/workspace/HELLO.md"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, out.read_text()
