"""From no credentials to a first pull request, as a newcomer does it: in a real browser.

`bash scripts/run` starts the service in setup mode (`claudecluster serve`, with only the model
credential in the gateway's env file): the web serves /setup and prints its link, the worker
waits. Headless Chromium
opens the link, registers the App through the GitHub stand-in's manifest form, installs it, and
comes back; the credentials are then on disk (0600, each in its role's file) and the running
service, never restarted, answers a `/claude` comment that GitHub delivers to the webhook the
manifest registered, with a pull request.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import subprocess
from pathlib import Path

import httpx
import pytest
from dotenv import dotenv_values

from jobs.common.settings import SECRET_OWNERS
from tests.browser import chromium
from tests.e2e.conftest import FINAL, MODEL_KEY, service_env
from tests.standins.anthropic import Text, ToolUse
from tests.standins.github import GitHubStandIn
from tests.support import ROOT, free_port, wait_for

REPO = "octocat/hello-setup"
APP_NAME = "ClaudeCluster Setup Test"
NOTES = "# Notes\n\nWritten by the session that followed setup.\n"


@pytest.fixture
def fresh_github(tmp_path):
    """A GitHub with no App registered for this service yet, and a repository to install on."""
    with GitHubStandIn(app_slug="unregistered", app_name="Unregistered") as gh:
        gh.reachable_hook_hosts.add("127.0.0.1")  # as a tunnel would make it
        gh.add_user("octocat", id=583231)
        gh.add_account_repo(REPO, {"README.md": "# hello\n"})
        yield gh


@contextlib.contextmanager
def service_in_setup_mode(github, stand_ins, tmp_path: Path):
    """The service as the README starts it, `bash scripts/run`, with nothing configured but
    where GitHub is, the public address, and the model credential in the gateway's file."""
    port = free_port()
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    (env_dir / "gateway.env").write_text(
        f"ANTHROPIC_API_KEY={MODEL_KEY}\nANTHROPIC_BASE_URL={stand_ins.anthropic.url}\n"
    )
    workspaces = tmp_path / "workspaces"
    workspaces.mkdir()
    env = service_env(
        github,
        stand_ins.anthropic,
        stand_ins.redis_server.removesuffix("/0") + "/9",
        stand_ins.agent_image,
        workspaces,
        port,
    )
    for name in [n for n in env if n in SECRET_OWNERS or n.startswith(("GITHUB_", "ANTHROPIC_"))]:
        del env[name]  # what setup provides, and the model key, which only the gateway's file has
    env.update(
        {
            "CLAUDECLUSTER_ENV_DIR": str(env_dir),
            "GITHUB_URL": github.url,
            "PUBLIC_URL": f"http://127.0.0.1:{port}",
        }
    )
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        ["bash", "scripts/run", "--port", str(port)],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}", env_dir, log, proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


def read(path: Path) -> str:
    return path.read_text(errors="replace")


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_setup_in_a_browser_then_a_comment_gets_a_pull_request(fresh_github, stand_ins, tmp_path):
    gh, api = fresh_github, stand_ins.anthropic
    api.reset()
    with service_in_setup_mode(gh, stand_ins, tmp_path) as (url, env_dir, log, proc):

        def setup_link():
            assert proc.poll() is None, f"scripts/run exited:\n{read(log)}"
            found = re.search(r"setup: +(http://\S+/setup\?token=[\w-]+)$", read(log), re.M)
            return found and found.group(1)

        link = wait_for(setup_link, 300, what="the setup link on the console")
        for role in ("web", "worker", "gateway", "egress"):  # honcho's prefixes, all running
            assert re.search(rf"^\S* ?{role}\.1 +\|", read(log), re.M), read(log)
        health = httpx.get(f"{url}/healthz", timeout=5).json()
        assert health["setup"].startswith("required"), health
        wait_for(lambda: "waiting for setup" in read(log), 60, what="the worker waiting")
        # Deliveries are refused, clearly, until setup has run.
        early = httpx.post(f"{url}/webhooks", content=b"{}", timeout=5)
        assert early.status_code == 503 and "setup" in early.json()["error"]
        # Without the token the page is closed.
        assert httpx.get(f"{url}/setup", timeout=5).status_code == 403

        with chromium() as browser:
            page = browser.new_page()
            page.goto(link)
            assert page.url == f"{url}/setup"  # the token went into a cookie, off the address
            assert page.locator("#webhook").inner_text().endswith(f"{url}/webhooks.")
            page.fill("#name", APP_NAME)
            page.click("#register")
            # The stand-in's manifest form, reached by the page's own form post.
            page.wait_for_selector("#create-app")
            assert page.url.startswith(f"{gh.url}/settings/apps/new?state=")
            assert page.input_value("#app-name") == APP_NAME
            page.click("#create-app")
            # Back here with the code, converted, then on to GitHub's install page.
            page.wait_for_selector("#install")
            assert page.url == f"{gh.url}/github-apps/claudecluster-setup-test/installations/new"
            page.click("#install")
            page.wait_for_selector("#message")
            assert page.url.startswith(f"{url}/setup/installed?installation_id=")
            assert "installed" in page.title()

        # The credentials, each in its role's file, 0600; the token that opened setup is gone.
        worker_env, web_env = env_dir / "worker.env", env_dir / "web.env"
        assert mode_of(worker_env) == 0o600 and mode_of(web_env) == 0o600
        worker, web = dotenv_values(worker_env), dotenv_values(web_env)
        assert worker["GITHUB_APP_ID"] == str(gh.app_id)
        pem = worker["GITHUB_PRIVATE_KEY"].replace("\\n", "\n")
        assert pem.strip() == gh.private_key_pem.strip()
        assert worker["GITHUB_API_URL"] == gh.api_url
        assert web["GITHUB_WEBHOOK_SECRET"] == gh.webhook_secret
        assert web["GITHUB_CLIENT_ID"] == gh.app_client_id and web["GITHUB_CLIENT_SECRET"]
        assert "GITHUB_PRIVATE_KEY" not in web and "GITHUB_WEBHOOK_SECRET" not in worker
        assert not (env_dir / "setup.token").exists()
        assert gh.webhook_url == f"{url}/webhooks"
        # Setup is over: no page of it opens again, with or without the old link.
        assert httpx.get(link, timeout=5).status_code == 404
        assert httpx.get(f"{url}/setup", timeout=5).status_code == 404
        assert httpx.get(f"{url}/healthz", timeout=5).json().get("setup") is None

        # The worker found its credentials without a restart; a comment gets a pull request.
        wait_for(lambda: "Listening on" in read(log), 60, what="the worker starting")
        write_notes = ToolUse("Write", {"file_path": "/workspace/NOTES.md", "content": NOTES})
        api.script([write_notes, Text("Done.")])
        with chromium() as browser:
            page = browser.new_page()
            page.goto(f"{gh.url}/{REPO}/issues/new")
            page.fill("#title", "Add notes")
            page.click("#open-issue")
            page.wait_for_selector("#comment")
            page.fill("#comment", "/claude add NOTES.md")
            page.click("#send")
            page.wait_for_selector(".comment")

            def final():
                done = [c for c in gh.comments if c.issue_number == 1 and FINAL.search(c.body)]
                return done[0] if done else None

            try:
                ended = wait_for(final, 240, what="the session's final comment")
            except AssertionError:
                raise AssertionError(read(log)[-4000:]) from None
            page.reload()
            page.click("#pulls a")
            assert "+Written by the session that followed setup." in page.inner_text("#diff")
        (delivery,) = [d for d in gh.hook_deliveries if d.event == "issue_comment"]
        assert delivery.status_code == 202, delivery.response_body
        assert "state=done" in ended.body, ended.body
        pulls = [p for p in gh.pulls if p.full_name == REPO]
        assert len(pulls) == 1 and pulls[0].user.login == f"{gh.app_slug}[bot]"
        assert gh.read_file(REPO, pulls[0].head_ref, "NOTES.md") == NOTES
        # Nothing of the App's secrets reached any process's log.
        text = read(log)
        for secret in (
            gh.private_key_pem.splitlines()[1],
            gh.webhook_secret,
            web["GITHUB_CLIENT_SECRET"],
        ):
            assert secret not in text
