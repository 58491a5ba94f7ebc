"""What a person's browser does on the setup pages and GitHub's, for tests without one: read
the forms, post the manifest, confirm it."""

from __future__ import annotations

import html
import json
import re
from urllib.parse import parse_qs, urlsplit

import httpx

from tests.standins.github import GitHubStandIn


def form_key(page: str) -> str:
    return re.search(r'name="form_key" value="([0-9a-f]+)"', page).group(1)


def github_form(page: str) -> tuple[str, dict]:
    action = re.search(r'<form method="post" action="([^"]+)" id="to-github">', page).group(1)
    value = re.search(r'name="manifest" value="([^"]*)"', page).group(1)
    return html.unescape(action), json.loads(html.unescape(value))


def register_on_github(gh: GitHubStandIn, action: str, built: dict) -> str:
    """The person's clicks on GitHub: post the manifest, confirm; returns the redirect."""
    state = parse_qs(urlsplit(action).query)["state"][0]
    form = httpx.post(action, data={"manifest": json.dumps(built)})
    assert form.status_code == 200 and "create-app" in form.text, form.text
    done = httpx.post(
        f"{gh.url}/settings/apps/new/confirm",
        data={"manifest": json.dumps(built), "state": state, "name": built["name"]},
    )
    assert done.status_code == 302, done.text
    return done.headers["Location"]
