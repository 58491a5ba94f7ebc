"""`claudecluster setup` as a person runs it in a terminal, against the GitHub stand-in.

Without a running service it starts the setup web itself, prints the link and waits until
GitHub's answer is on disk; `--app-id --private-key` imports an App registered by hand, after
GitHub confirms the key; a second run says setup is done and changes nothing.
"""

from __future__ import annotations

import re
import subprocess

import httpx
import pytest
from dotenv import dotenv_values

from tests.cli_support import CLI, cli_env, run_cli
from tests.setup_pages import form_key, github_form, register_on_github
from tests.standins.github import GitHubStandIn
from tests.support import ROOT, free_port, wait_for


@pytest.fixture
def gh():
    with GitHubStandIn() as standin:
        standin.reachable_hook_hosts.add("127.0.0.1")
        yield standin


def test_setup_runs_the_manifest_flow_from_the_terminal(tmp_path, gh):
    env_dir, port = tmp_path / "env", free_port()
    public = f"http://127.0.0.1:{port}"
    env = cli_env(tmp_path, GITHUB_URL=gh.url, PUBLIC_URL=public, REDIS_URL="redis://127.0.0.1:1/0")
    out = tmp_path / "out.txt"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [str(CLI), "setup", "--port", str(port), "--no-browser"],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        link = wait_for(
            lambda: (m := re.search(r"(http://\S+/setup\?token=\S+)", out.read_text())) and m[1],
            60,
            what="the setup link",
        )

        def page_up() -> bool:
            try:
                return httpx.get(f"{public}/healthz", timeout=2).status_code in (200, 503)
            except httpx.HTTPError:
                return False

        wait_for(page_up, 60, what="the setup web")
        with httpx.Client(base_url=public, timeout=10) as browser:
            assert browser.get(link).status_code == 303
            page = browser.get("/setup").text
            started = browser.post(
                "/setup/start", data={"form_key": form_key(page), "name": "Term"}
            )
            action, built = github_form(started.text)
            back = register_on_github(gh, action, built)
            done = browser.get(back.removeprefix(public))
            assert done.status_code == 303, done.text
        assert proc.wait(60) == 0, out.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    text = out.read_text()
    assert f"{gh.url}/github-apps/term/installations/new" in text
    assert dotenv_values(env_dir / "worker.env")["GITHUB_APP_ID"] == str(gh.app_id)
    assert gh.webhook_secret not in text
    # The setup web it started is gone with it.
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{public}/healthz", timeout=2)


def test_setup_imports_an_app_after_github_confirms_its_key(tmp_path, gh):
    env_dir = tmp_path / "env"
    env = cli_env(tmp_path, GITHUB_URL=gh.url)
    wrong, right = tmp_path / "wrong.pem", tmp_path / "right.pem"
    wrong.write_text(GitHubStandIn().private_key_pem)
    right.write_text(gh.private_key_pem)
    secret = "an-imported-webhook-secret"

    refused = run_cli(
        env, "setup", "--app-id", str(gh.app_id), "--private-key", str(wrong), stdin=secret + "\n"
    )
    assert refused.returncode == 1
    assert "GitHub refused this App ID and key" in refused.stderr
    assert not (env_dir / "worker.env").exists()
    assert run_cli(env, "setup", "--app-id", str(gh.app_id)).returncode == 2  # a usage error

    imported = run_cli(
        env, "setup", "--app-id", str(gh.app_id), "--private-key", str(right), stdin=secret + "\n"
    )
    assert imported.returncode == 0, imported.stderr
    assert "imported" in imported.stderr and secret not in imported.stdout + imported.stderr
    assert dotenv_values(env_dir / "web.env")["GITHUB_WEBHOOK_SECRET"] == secret
    before = {p.name: p.read_bytes() for p in env_dir.glob("*.env")}
    again = run_cli(
        env, "setup", "--app-id", str(gh.app_id), "--private-key", str(wrong), stdin="x" * 20 + "\n"
    )
    assert again.returncode == 0 and "already done" in again.stderr
    assert {p.name: p.read_bytes() for p in env_dir.glob("*.env")} == before
