"""Setup mode's pages and the registration behind them, against the GitHub stand-in over HTTP.

The browser walk through the whole flow is tests/e2e/test_setup.py; here each rule on its own:
who may open setup, what the manifest holds with and without a public address, forged and
stale answers from "GitHub", codes used twice, an imported App with a wrong key, the files'
modes and what else they keep, and that once credentials exist nothing from the network
overwrites them.
"""

from __future__ import annotations

import json
import stat
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import yaml
from dotenv import dotenv_values

from app import create_app
from app.setup import COOKIE, SITE_COOKIE, announce
from jobs.common import registration
from jobs.common.registration import (
    AlreadyRegistered,
    CredentialStore,
    ExistingApp,
    GitHubSite,
    Registration,
    SetupError,
    convert,
    import_existing,
    manifest,
    new_state,
    state_valid,
    write_env_file,
)
from jobs.common.settings import WebSettings, WorkerSettings
from tests.setup_pages import form_key, github_form, register_on_github
from tests.standins import openapi
from tests.standins.github import GitHubStandIn
from tests.support import ROOT

APP_YML = yaml.safe_load((ROOT / "app.yml").read_text())


@pytest.fixture
def gh():
    with GitHubStandIn() as standin:
        standin.reachable_hook_hosts.add("127.0.0.1")
        yield standin


@pytest.fixture
def env_dir(tmp_path) -> Path:
    path = tmp_path / "env"
    path.mkdir()
    for role in ("web", "worker", "gateway"):
        (path / f"{role}.env").touch(0o600)
    return path


def setup_client(env_dir: Path, redis_url: str, **settings: str):
    values = {"REDIS_URL": redis_url, **settings}
    app = create_app(WebSettings.parse(**values))
    app.extensions["setup"].store = CredentialStore(env_dir)
    return app.test_client(), CredentialStore(env_dir)


def opened(client, store: CredentialStore) -> str:
    """The browser that followed the console link: holds the token in its cookie."""
    token = store.setup_token()
    answer = client.get(f"/setup?token={token}")
    assert answer.status_code == 303 and answer.headers["Location"] == "/setup"
    return token


# ---------------------------------------------------------------------- who may open setup


def test_setup_needs_the_console_token_and_closes_once_credentials_exist(env_dir, redis_url):
    client, store = setup_client(env_dir, redis_url)
    assert client.get("/setup").status_code == 403
    assert client.get("/setup?token=not-the-token").status_code == 403
    assert store.setup_token()  # made now, 0600
    assert stat.S_IMODE((env_dir / "setup.token").stat().st_mode) == 0o600
    opened(client, store)
    page = client.get("/setup")
    assert page.status_code == 200 and "Register the App on GitHub" in page.text
    assert page.headers["Cache-Control"] == "no-store"
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert client.get("/healthz").json["setup"].startswith("required")

    write_env_file(env_dir / "worker.env", {"GITHUB_APP_ID": "7"})
    assert client.get("/setup").status_code == 404
    assert "setup" not in client.get("/healthz").json


def test_announce_prints_the_link_once_per_start_and_nothing_when_set_up(env_dir, capsys):
    settings = WebSettings.parse(PORT="8123", PUBLIC_URL="https://cc.example.net")
    announce(settings, env_dir)
    token = (env_dir / "setup.token").read_text().strip()
    assert f"https://cc.example.net/setup?token={token}" in capsys.readouterr().err
    write_env_file(env_dir / "web.env", {"GITHUB_WEBHOOK_SECRET": "s" * 32})
    announce(settings, env_dir)
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------------- the manifest


def test_the_manifest_is_app_yml_with_this_services_addresses():
    built = manifest("https://cc.example.net", "https://cc.example.net", "My Cluster")
    assert built["name"] == "My Cluster"
    assert built["default_events"] == APP_YML["default_events"]
    assert built["default_permissions"] == APP_YML["default_permissions"]
    assert built["redirect_url"] == "https://cc.example.net/setup/callback"
    assert built["setup_url"] == "https://cc.example.net/setup/installed"
    assert built["hook_attributes"] == {"url": "https://cc.example.net/webhooks", "active": True}
    assert "hook_attributes" not in manifest("http://localhost:8000", None)


def test_without_a_public_url_the_page_says_how_and_github_gets_no_hook(env_dir, redis_url, gh):
    client, store = setup_client(env_dir, redis_url, GITHUB_URL=gh.url)
    opened(client, store)
    page = client.get("/setup")  # reached as http://localhost/
    assert 'id="no-public-url"' in page.text and "tunnel" in page.text
    started = client.post("/setup/start", data={"form_key": form_key(page.text), "name": "X"})
    action, built = github_form(started.text)
    assert "hook_attributes" not in built
    assert built["redirect_url"] == "http://localhost/setup/callback"
    assert action.startswith(f"{gh.url}/settings/apps/new?state=")
    # GitHub itself refuses a hook it cannot reach (the stand-in as well).
    gh.reachable_hook_hosts.clear()
    refused = httpx.post(
        action,
        data={
            "manifest": json.dumps(
                {**built, "hook_attributes": {"url": "http://localhost/webhooks"}}
            )
        },
    )
    assert refused.status_code == 422 and "reachable over the public Internet" in refused.text


def test_forwarded_headers_of_a_tunnel_give_the_webhook_url(env_dir, redis_url, gh):
    client, store = setup_client(env_dir, redis_url, GITHUB_URL=gh.url)
    opened(client, store)
    headers = {"X-Forwarded-Host": "abc.trycloudflare.com", "X-Forwarded-Proto": "https"}
    page = client.get("/setup", headers=headers)
    assert "https://abc.trycloudflare.com/webhooks" in page.text
    started = client.post(
        "/setup/start",
        data={"form_key": form_key(page.text), "organization": "octo-org"},
        headers=headers,
    )
    action, built = github_form(started.text)
    assert built["hook_attributes"]["url"] == "https://abc.trycloudflare.com/webhooks"
    assert action.startswith(f"{gh.url}/organizations/octo-org/settings/apps/new?state=")
    assert "form-action " + gh.url in started.headers["Content-Security-Policy"]


def test_a_form_post_without_the_pages_key_is_refused(env_dir, redis_url):
    client, store = setup_client(env_dir, redis_url)
    opened(client, store)
    assert client.post("/setup/start", data={"name": "X"}).status_code == 403
    assert client.post("/setup/import", data={"app_id": "1"}).status_code == 403


def test_github_enterprise_server_and_dotcom_sites():
    dotcom = GitHubSite.at(None)
    assert (dotcom.web_url, dotcom.api_url) == ("https://github.com", "https://api.github.com")
    ghes = GitHubSite.at("https://ghe.example.com/")
    assert ghes.api_url == "https://ghe.example.com/api/v3"
    assert ghes.new_app_url("my org", "s").startswith(
        "https://ghe.example.com/organizations/my%20org/settings/apps/new?state=s"
    )
    with pytest.raises(SetupError, match="https://"):
        GitHubSite.at("ghe.example.com")


# ---------------------------------------------------------------------- GitHub's round trip


def test_the_whole_round_trip_writes_each_secret_to_its_role(env_dir, redis_url, gh):
    public = "http://127.0.0.1:9"  # reachable for the stand-in, as a tunnel's would be
    client, store = setup_client(env_dir, redis_url, GITHUB_URL=gh.url, PUBLIC_URL=public)
    (env_dir / "worker.env").write_text("# the worker\nSANDBOX_RUNTIME=runsc\nGITHUB_APP_ID=\n")
    opened(client, store)
    page = client.get("/setup")
    started = client.post(
        "/setup/start", data={"form_key": form_key(page.text), "name": "Round Trip"}
    )
    action, built = github_form(started.text)
    back = register_on_github(gh, action, built)
    assert back.startswith(f"{public}/setup/callback?code=")
    answer = client.get(back.removeprefix(public))
    assert answer.status_code == 303
    assert answer.headers["Location"] == f"{gh.url}/github-apps/round-trip/installations/new"

    worker, web = dotenv_values(env_dir / "worker.env"), dotenv_values(env_dir / "web.env")
    assert worker["SANDBOX_RUNTIME"] == "runsc"  # the file's other lines are kept
    assert "# the worker" in (env_dir / "worker.env").read_text()
    assert worker["GITHUB_APP_ID"] == str(gh.app_id) and worker["GITHUB_API_URL"] == gh.api_url
    pem = worker["GITHUB_PRIVATE_KEY"].replace("\\n", "\n").strip()
    assert pem == gh.private_key_pem.strip()
    assert web["GITHUB_WEBHOOK_SECRET"] == gh.webhook_secret
    assert web["GITHUB_CLIENT_ID"] == gh.app_client_id
    assert set(web) >= {"GITHUB_CLIENT_SECRET", "GITHUB_APP_URL"}
    assert not {"GITHUB_PRIVATE_KEY", "GITHUB_APP_ID"} & set(web)
    for role in ("web", "worker"):
        assert stat.S_IMODE((env_dir / f"{role}.env").stat().st_mode) == 0o600
    # The worker's settings read what setup wrote, key included.
    read_back = WorkerSettings(_env_file=(str(env_dir / "worker.env"),))
    assert read_back.github_app_id == gh.app_id
    assert read_back.private_key.strip() == gh.private_key_pem.strip()
    assert gh.webhook_url == f"{public}/webhooks"
    conversions = [r for r in gh.responses if r.template == "/app-manifests/{code}/conversions"]
    assert len(conversions) == 1 and conversions[0].status == 201
    for spec in openapi.SPECS:
        openapi.validate_response(
            "POST", conversions[0].template, 201, conversions[0].body, spec=spec
        )
    # Replaying GitHub's answer: setup is over, and nothing is written again.
    before = (env_dir / "worker.env").read_bytes()
    assert client.get(back.removeprefix(public)).status_code == 404
    assert (env_dir / "worker.env").read_bytes() == before


def test_a_forged_or_swapped_state_is_refused_and_nothing_is_written(env_dir, redis_url, gh):
    client, store = setup_client(env_dir, redis_url, GITHUB_URL=gh.url)
    token = opened(client, store)
    site = f"{gh.url} {gh.api_url}"
    client.set_cookie(SITE_COOKIE, site, path="/setup")
    forged = new_state("someone-elses-token", site)
    assert client.get(f"/setup/callback?code=abc&state={forged}").status_code == 400
    elsewhere = new_state(token, "https://evil.example https://evil.example/api/v3")
    assert client.get(f"/setup/callback?code=abc&state={elsewhere}").status_code == 400
    assert client.get("/setup/callback?code=abc").status_code == 400
    assert not store.registered()
    # Without the setup cookie, even a right state opens nothing.
    client.delete_cookie(COOKIE, path="/setup")
    good = new_state(token, site)
    assert client.get(f"/setup/callback?code=abc&state={good}").status_code == 403


def test_states_expire_after_githubs_hour():
    state = new_state("t", "site", now=1_000_000)
    assert state_valid("t", state, "site", now=1_000_000 + 3599)
    assert not state_valid("t", state, "site", now=1_000_000 + 3601)
    assert not state_valid("t", state, "other site", now=1_000_000 + 1)
    assert not state_valid("t", "not.a.state", "site")


def test_a_code_converts_once(gh):
    built = manifest("http://127.0.0.1:9", "http://127.0.0.1:9", "Once")
    back = register_on_github(gh, f"{gh.url}/settings/apps/new?state=s", built)
    code = parse_qs(urlsplit(back).query)["code"][0]
    site = GitHubSite.at(gh.url)
    first = convert(site, code)
    assert first.app_id == gh.app_id and "KEY" not in repr(first)
    with pytest.raises(SetupError, match="used once"):
        convert(site, code)
    with pytest.raises(SetupError, match="cannot reach GitHub"):
        convert(GitHubSite.at("http://127.0.0.1:9"), code)


# ---------------------------------------------------------------------- an existing App


def test_importing_an_existing_app_checks_its_key_with_github(env_dir, redis_url, gh):
    client, store = setup_client(env_dir, redis_url, GITHUB_URL=gh.url)
    opened(client, store)
    key = form_key(client.get("/setup").text)
    other = GitHubStandIn()  # a key pair GitHub never saw for this App
    wrong = {
        "form_key": key,
        "app_id": str(gh.app_id),
        "private_key": other.private_key_pem,
        "webhook_secret": "w" * 24,
    }
    refused = client.post("/setup/import", data=wrong)
    assert refused.status_code == 400 and "refused this App ID and key" in refused.text
    assert other.private_key_pem.splitlines()[1] not in refused.text
    assert client.post("/setup/import", data={**wrong, "private_key": "nope"}).status_code == 400
    assert not store.registered()

    right = {**wrong, "private_key": gh.private_key_pem.replace("\n", "\\n")}
    answer = client.post("/setup/import", data=right)
    assert answer.status_code == 303 and answer.headers["Location"].endswith("/installations/new")
    worker = dotenv_values(env_dir / "worker.env")
    assert worker["GITHUB_APP_ID"] == str(gh.app_id)
    assert dotenv_values(env_dir / "web.env")["GITHUB_WEBHOOK_SECRET"] == "w" * 24
    # The attack: someone on the network imports their own App over ours. Closed.
    before = {p.name: p.read_bytes() for p in env_dir.glob("*.env")}
    again = client.post("/setup/import", data={**right, "webhook_secret": "x" * 24})
    assert again.status_code == 404
    assert {p.name: p.read_bytes() for p in env_dir.glob("*.env")} == before


def test_import_rejects_what_cannot_be_an_app(gh):
    site = GitHubSite.at(gh.url)
    good = ExistingApp(str(gh.app_id), gh.private_key_pem, "w" * 24)
    assert import_existing(site, good).slug == gh.app_slug
    with pytest.raises(SetupError, match="number"):
        import_existing(site, ExistingApp("abc", gh.private_key_pem, "w" * 24))
    with pytest.raises(SetupError, match="at least 16"):
        import_existing(site, ExistingApp(str(gh.app_id), gh.private_key_pem, "short"))


# ---------------------------------------------------------------------- the files


def sample(app_id: int = 5) -> Registration:
    return Registration(
        app_id=app_id,
        slug="s",
        html_url="https://github.com/apps/s",
        pem="-----BEGIN TEST-----\nabc\n-----END TEST-----\n",
        webhook_secret="w" * 32,
        client_id="Iv1.x",
        client_secret="c" * 40,
    )


def test_saving_twice_is_refused_even_when_racing(env_dir):
    store = CredentialStore(env_dir)
    results: list[str] = []

    def save(app_id: int) -> None:
        try:
            store.save(sample(app_id))
            results.append("saved")
        except AlreadyRegistered:
            results.append("refused")

    threads = [threading.Thread(target=save, args=(n,)) for n in range(1, 6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == ["refused"] * 4 + ["saved"]
    assert "GITHUB_API_URL" not in dotenv_values(env_dir / "worker.env")  # github.com's default


def test_write_env_file_is_atomic_0600_and_refuses_what_it_cannot_quote(tmp_path):
    path = tmp_path / "web.env"
    path.write_text("PORT=9000\n#GITHUB_WEBHOOK_SECRET=old\n")
    path.chmod(0o644)
    write_env_file(path, {"GITHUB_WEBHOOK_SECRET": "new secret # with hash"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    values = dotenv_values(path)
    assert values == {"PORT": "9000", "GITHUB_WEBHOOK_SECRET": "new secret # with hash"}
    with pytest.raises(SetupError, match="single quote"):
        write_env_file(path, {"X": "it's"})
    assert [p.name for p in tmp_path.iterdir()] == ["web.env"]  # no temporary left behind


def test_the_app_manifest_file_is_the_one_at_the_top_of_the_repository():
    assert registration.APP_MANIFEST == ROOT / "app.yml"
