"""Drive the GitHub stand-in the way the worker will: githubkit (App JWT → installation token →
typed REST calls, ``.parsed_data``) and the git CLI over smart HTTP with a credential helper.

Every response the stand-in sends during a test is validated against GitHub's OpenAPI
description (GHES 3.19 and api.github.com) when the test ends; the last tests run every
endpoint once more and prove that the validator rejects broken bodies.
"""

from __future__ import annotations

import base64
import gzip
import os
import re
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from githubkit import AppAuthStrategy, GitHub, TokenAuthStrategy
from githubkit.cache import MemCacheStrategy
from githubkit.exception import RequestFailed
from githubkit.utils import UNSET
from jsonschema import Draft202012Validator

from tests.standins import openapi
from tests.standins.github import ROUTES, GitHubStandIn
from tests.standins.github_pulls import NewPull

OWNER = "octo-org"
REPO = "widgets"
FULL = f"{OWNER}/{REPO}"
OTHER = "gadgets"
INSTALLATION = 4242
ISSUE = 7
WRITE_PERMS = {
    "checks": "write",
    "contents": "write",
    "issues": "write",
    "pull_requests": "write",
}
FILES = {
    "README.md": "# widgets\n",
    "src/widgets/__init__.py": "VERSION = '1.0'\n",
    ".github/workflows/ci.yml": "on: push\njobs: {}\n",
}
TOKEN_RE = re.compile(r"^ghs_[A-Za-z0-9]{36}$")
REALISTIC_HEADERS = (
    "X-GitHub-Request-Id",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "X-RateLimit-Used",
    "X-RateLimit-Resource",
)

# The credential helper answers `get` from $GH_TOKEN; git never writes the token anywhere.
CREDENTIAL_HELPER = (
    '!f() { test "$1" = get || exit 0; echo username="${GH_USER:-x-access-token}"; '
    'echo password="$GH_TOKEN"; }; f'
)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def openapi_specs():
    """Fail (never skip) when the OpenAPI description is not installed."""
    try:
        for spec in openapi.SPECS:
            openapi.load_spec(spec)
    except openapi.OpenAPISpecMissing as exc:
        pytest.fail(str(exc))
    return openapi.SPECS


def validate_all(standin: GitHubStandIn, specs) -> int:
    """Check every recorded response against the OpenAPI description. A non-JSON answer (a
    diff, raw content) must use a media type the operation's description documents."""
    failures = []
    for resp in standin.responses:
        for spec in specs:
            if resp.body is not None and resp.media_type != "application/json":
                operation = openapi.load_spec(spec)["paths"][resp.template][resp.method.lower()]
                if resp.status != 200 or resp.media_type not in operation["description"]:
                    failures.append(f"{resp.method} {resp.template}: {resp.media_type} [{spec}]")
                continue
            try:
                openapi.validate_response(
                    resp.method, resp.template, resp.status, resp.body, spec=spec
                )
            except openapi.OpenAPIValidationError as exc:
                failures.append(str(exc))
    assert not failures, "responses not matching GitHub's OpenAPI description:\n" + "\n".join(
        failures
    )
    return len(standin.responses)


@pytest.fixture
def github(openapi_specs):
    with GitHubStandIn() as standin:
        standin.add_installation(INSTALLATION, OWNER, permissions=dict(WRITE_PERMS))
        standin.add_repo(FULL, INSTALLATION, files=FILES)
        standin.add_repo(f"{OWNER}/{OTHER}", INSTALLATION, private=True)
        standin.add_issue(
            FULL, ISSUE, "Crash on start", "It crashes.\n\n/claude fix it", "alice", 5001
        )
        standin.add_collaborator(FULL, "alice", "write")
        standin.add_user("mallory", 6666)
        yield standin
        assert standin.errors == [], "stand-in raised:\n" + "\n".join(standin.errors)
        validate_all(standin, openapi_specs)


# githubkit notes: (1) its default cache (JWTs, installation tokens) is process-wide and keyed
# by app id only, so every client here gets its own MemCacheStrategy; (2) `.rest` holds a weak
# reference to the client, so keep the client in a variable (no `app_client(...).rest...`).


def app_client(standin: GitHubStandIn, private_key: str | None = None) -> GitHub:
    return GitHub(
        AppAuthStrategy(standin.app_id, private_key or standin.private_key_pem),
        base_url=standin.api_url,
        http_cache=False,
        auto_retry=False,
        cache_strategy=MemCacheStrategy(),
    )


def token_client(standin: GitHubStandIn, token: str) -> GitHub:
    return GitHub(
        TokenAuthStrategy(token),
        base_url=standin.api_url,
        http_cache=False,
        auto_retry=False,
        cache_strategy=MemCacheStrategy(),
    )


def mint(standin: GitHubStandIn, repositories=(REPO,), permissions=None) -> str:
    app = app_client(standin)
    resp = app.rest.apps.create_installation_access_token(
        INSTALLATION,
        repositories=list(repositories),
        permissions=dict(permissions or WRITE_PERMS),
    )
    return resp.parsed_data.token


def failure(call) -> RequestFailed:
    with pytest.raises(RequestFailed) as info:
        call()
    return info.value


def git_env(home: Path, token: str | None, user: str | None = None) -> dict[str, str]:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": "ClaudeCluster",
        "GIT_AUTHOR_EMAIL": "bot@claudecluster.example.test",
        "GIT_COMMITTER_NAME": "ClaudeCluster",
        "GIT_COMMITTER_EMAIL": "bot@claudecluster.example.test",
        "LC_ALL": "C",
    }
    if token is not None:
        env.update(
            {
                "GIT_CONFIG_COUNT": "1",
                "GIT_CONFIG_KEY_0": "credential.helper",
                "GIT_CONFIG_VALUE_0": CREDENTIAL_HELPER,
                "GH_TOKEN": token,
            }
        )
        if user is not None:
            env["GH_USER"] = user
    return env


def git(env: dict[str, str], *args: str, cwd: Path, check: bool = True):
    proc = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def clone(standin: GitHubStandIn, tmp_path: Path, token: str | None, name: str = "work"):
    env = git_env(tmp_path / "home", token)
    (tmp_path / "home").mkdir(exist_ok=True)
    git(env, "clone", "--quiet", f"{standin.url}/{FULL}.git", name, cwd=tmp_path)
    return env, tmp_path / name


def commit_file(env, work: Path, path: str, text: str, message: str) -> str:
    target = work / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    git(env, "add", path, cwd=work)
    git(env, "commit", "--quiet", "-m", message, cwd=work)
    return git(env, "rev-parse", "HEAD", cwd=work).stdout.strip()


# --------------------------------------------------------------------------- app (JWT) side


def test_app_identity_and_token_minting(github):
    app = app_client(github)
    me = app.rest.apps.get_authenticated().parsed_data
    assert me.id == github.app_id
    assert me.slug == github.app_slug == "claudecluster-test"

    listed = app.rest.apps.list_installations(per_page=1).parsed_data
    assert [(i.id, i.account.login, i.app_id) for i in listed] == [
        (INSTALLATION, OWNER, github.app_id)
    ]
    installation = app.rest.apps.get_repo_installation(OWNER, REPO).parsed_data
    assert installation.id == INSTALLATION
    assert installation.account.login == OWNER

    before = datetime.now(UTC)
    resp = app.rest.apps.create_installation_access_token(
        INSTALLATION, repositories=[REPO], permissions={"contents": "read", "issues": "write"}
    )
    assert resp.status_code == 201
    token = resp.parsed_data
    assert TOKEN_RE.match(token.token)
    expires = datetime.strptime(token.expires_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert timedelta(minutes=59) <= expires - before <= timedelta(minutes=61)
    assert token.repository_selection == "selected"
    assert [r.full_name for r in token.repositories] == [FULL]
    assert token.repositories[0].clone_url == f"{github.url}/{FULL}.git"
    assert token.permissions.contents == "read"
    assert token.permissions.issues == "write"
    assert token.permissions.metadata == "read"

    # no body: every repository and permission of the installation
    everything = app.rest.apps.create_installation_access_token(INSTALLATION).parsed_data
    info = github.token_info(everything.token)
    assert info.repository_ids is None
    assert info.permissions == {**WRITE_PERMS, "metadata": "read"}

    assert [(r.installation_id, r.body, r.status) for r in github.token_requests] == [
        (
            INSTALLATION,
            {"repositories": [REPO], "permissions": {"contents": "read", "issues": "write"}},
            201,
        ),
        (INSTALLATION, {}, 201),
    ]
    jwt_requests = [r for r in github.requests if r.auth == "jwt"]
    assert len(jwt_requests) == 5


def test_token_minting_refuses_more_than_the_installation_has(github):
    app = app_client(github)
    not_installed = failure(
        lambda: app.rest.apps.create_installation_access_token(
            INSTALLATION, repositories=["not-installed"]
        )
    )
    assert not_installed.response.status_code == 422
    assert "not accessible to the parent installation" in not_installed.response.json()["message"]

    too_much = failure(
        lambda: app.rest.apps.create_installation_access_token(
            INSTALLATION, permissions={"administration": "write"}
        )
    )
    assert too_much.response.status_code == 422
    assert too_much.response.json()["message"] == (
        "The permissions requested are not granted to this installation."
    )

    unknown_id = failure(
        lambda: app.rest.apps.create_installation_access_token(INSTALLATION, repository_ids=[1])
    )
    assert unknown_id.response.status_code == 422

    missing = failure(lambda: app.rest.apps.create_installation_access_token(999))
    assert missing.response.status_code == 404

    assert [r.status for r in github.token_requests] == [422, 422, 422, 404]
    assert all(r.token is None for r in github.token_requests)


def test_bad_app_jwts_are_refused(github):
    other_key = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        .decode()
    )
    impostor = app_client(github, other_key)
    wrong_key = failure(lambda: impostor.rest.apps.get_authenticated())
    assert wrong_key.response.status_code == 401
    assert wrong_key.response.json()["message"] == "A JSON web token could not be decoded"

    moment = time.time()
    cases = {
        "expired": github.app_jwt(iat=moment - 1200, exp=moment - 600),
        "too far": github.app_jwt(iat=moment, exp=moment + 3600),
        "future iat": github.app_jwt(iat=moment + 600, exp=moment + 660),
        "wrong iss": github.app_jwt(iss="999999"),
        "garbage": "abc.def.ghi",
    }
    messages = {}
    for name, token in cases.items():
        resp = httpx.get(f"{github.api_url}/app", headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 401, name
        messages[name] = resp.json()["message"]
    assert "'Expiration time' claim ('exp') must be a numeric value" in messages["expired"]
    assert messages["too far"] == "'Expiration time' claim ('exp') is too far in the future"
    assert "'Issued at' claim ('iat')" in messages["future iat"]
    assert messages["garbage"] == "A JSON web token could not be decoded"

    # iss may be the app id as int or str
    for iss in (github.app_id, str(github.app_id)):
        ok = httpx.get(
            f"{github.api_url}/app",
            headers={"Authorization": f"Bearer {github.app_jwt(iss=iss)}"},
        )
        assert ok.status_code == 200

    # an installation token is not a JWT; a JWT is not an installation token
    token = mint(github)
    as_token = httpx.get(f"{github.api_url}/app", headers={"Authorization": f"token {token}"})
    assert as_token.status_code == 401
    jwt_on_repo = httpx.get(
        f"{github.api_url}/repos/{FULL}",
        headers={"Authorization": f"Bearer {github.app_jwt()}"},
    )
    assert jwt_on_repo.status_code == 403
    assert github.token_requests[-1].status == 201


# --------------------------------------------------------------------------- installation side


def test_installation_flow_with_typed_githubkit_calls(github):
    """What the worker does, through githubkit's own App → installation auth flow."""
    app = app_client(github)
    inst = app.with_auth(
        app.auth.as_installation(INSTALLATION, repositories=[REPO], permissions=WRITE_PERMS)
    )

    repo = inst.rest.repos.get(OWNER, REPO).parsed_data
    assert repo.full_name == FULL
    assert repo.default_branch == "main"
    assert repo.clone_url == f"{github.url}/{FULL}.git"
    assert repo.private is False
    assert repo.permissions.push is True
    # githubkit minted the token itself, exactly as asked
    assert github.token_requests[0].body == {"repositories": [REPO], "permissions": WRITE_PERMS}

    issue = inst.rest.issues.get(OWNER, REPO, ISSUE).parsed_data
    assert issue.title == "Crash on start"
    assert issue.user.login == "alice"
    assert issue.author_association == "COLLABORATOR"
    assert issue.pull_request is UNSET  # a plain issue, not a pull request

    trigger = github.add_comment(FULL, ISSUE, "/claude please fix", "alice")
    reaction = inst.rest.reactions.create_for_issue_comment(OWNER, REPO, trigger.id, content="eyes")
    assert reaction.status_code == 201
    assert reaction.parsed_data.content == "eyes"
    assert reaction.parsed_data.user.login == github.bot_login
    again = inst.rest.reactions.create_for_issue_comment(OWNER, REPO, trigger.id, content="eyes")
    assert again.status_code == 200
    assert again.parsed_data.id == reaction.parsed_data.id
    assert len(github.reactions) == 1

    created = inst.rest.issues.create_comment(OWNER, REPO, ISSUE, body="Working on it…")
    assert created.status_code == 201
    comment = created.parsed_data
    assert comment.user.login == "claudecluster-test[bot]"
    assert comment.user.type == "Bot"
    assert created.headers["location"] == comment.url

    fetched = inst.rest.issues.get_comment(OWNER, REPO, comment.id).parsed_data
    assert fetched.body == "Working on it…"
    updated = inst.rest.issues.update_comment(OWNER, REPO, comment.id, body="Done.").parsed_data
    assert updated.body == "Done."
    assert [c.body for c in github.comments] == ["/claude please fix", "Done."]

    listed = inst.rest.issues.list_comments(OWNER, REPO, ISSUE).parsed_data
    assert [c.id for c in listed] == [trigger.id, comment.id]
    assert listed[0].reactions.eyes == 1
    assert inst.rest.issues.get(OWNER, REPO, ISSUE).parsed_data.comments == 2

    alice = inst.rest.users.get_by_username("alice").parsed_data
    assert (alice.login, alice.id, alice.type) == ("alice", 5001, "User")
    bot = inst.rest.users.get_by_username(github.bot_login).parsed_data
    assert bot.type == "Bot"

    perm = inst.rest.repos.get_collaborator_permission_level(OWNER, REPO, "alice").parsed_data
    assert (perm.permission, perm.role_name, perm.user.login) == ("write", "write", "alice")
    stranger = inst.rest.repos.get_collaborator_permission_level(OWNER, REPO, "mallory")
    assert stranger.parsed_data.permission == "read"  # public repository, not a collaborator
    outside = failure(
        lambda: inst.rest.repos.get_collaborator_permission_level(OWNER, OTHER, "mallory")
    )
    assert outside.response.status_code == 404  # OTHER is not in this token's scope

    assert inst.rest.pulls.list(OWNER, REPO).parsed_data == []

    for resp in github.responses:
        for header in REALISTIC_HEADERS:
            assert header in resp.headers, (resp.path, header)
        if resp.body is not None:
            assert resp.headers["Content-Type"] == "application/json; charset=utf-8"


def test_scope_permissions_expiry_and_revocation(github):
    other_only = token_client(github, mint(github, repositories=[OTHER]))
    outside = failure(lambda: other_only.rest.repos.get(OWNER, REPO))
    assert outside.response.status_code == 404
    assert outside.response.json()["message"] == "Not Found"
    assert other_only.rest.repos.get(OWNER, OTHER).parsed_data.private is True
    assert (
        failure(
            lambda: other_only.rest.issues.create_comment(OWNER, REPO, ISSUE, body="x")
        ).response.status_code
        == 404
    )

    read_only = token_client(
        github, mint(github, permissions={"issues": "read", "pull_requests": "read"})
    )
    assert read_only.rest.issues.get(OWNER, REPO, ISSUE).parsed_data.number == ISSUE
    denied = failure(lambda: read_only.rest.issues.create_comment(OWNER, REPO, ISSUE, body="x"))
    assert denied.response.status_code == 403
    assert denied.response.json()["message"] == "Resource not accessible by integration"
    assert denied.response.headers["x-accepted-github-permissions"] == "issues=write"
    no_pr = failure(
        lambda: read_only.rest.pulls.create(OWNER, REPO, title="t", head="main", base="main")
    )
    assert no_pr.response.status_code == 403
    no_issues = token_client(github, mint(github, permissions={"contents": "read"}))
    assert (
        failure(lambda: no_issues.rest.issues.get(OWNER, REPO, ISSUE)).response.status_code == 403
    )
    assert github.comments == []

    token = mint(github)
    client = token_client(github, token)
    assert client.rest.repos.get(OWNER, REPO).status_code == 200
    github.expire_token(token)
    expired = failure(lambda: client.rest.repos.get(OWNER, REPO))
    assert expired.response.status_code == 401
    assert expired.response.json()["message"] == "Bad credentials"

    token = mint(github)
    client = token_client(github, token)
    assert client.rest.apps.revoke_installation_access_token().status_code == 204
    revoked = failure(lambda: client.rest.repos.get(OWNER, REPO))
    assert revoked.response.status_code == 401

    anonymous = httpx.get(f"{github.api_url}/repos/{FULL}")
    assert anonymous.status_code == 401
    assert anonymous.json()["message"] == "Requires authentication"
    bogus = httpx.get(f"{github.api_url}/repos/{FULL}", headers={"Authorization": "token nope"})
    assert bogus.status_code == 401


def test_comment_and_reaction_validation(github):
    client = token_client(github, mint(github))
    too_long = failure(
        lambda: client.rest.issues.create_comment(OWNER, REPO, ISSUE, body="x" * 65537)
    )
    assert too_long.response.status_code == 422
    assert "body is too long" in too_long.response.json()["errors"][0]["message"]
    assert (
        failure(
            lambda: client.rest.issues.create_comment(OWNER, REPO, 999, body="x")
        ).response.status_code
        == 404
    )
    assert failure(lambda: client.rest.issues.get_comment(OWNER, REPO, 1)).response.status_code == (
        404
    )
    comment = client.rest.issues.create_comment(OWNER, REPO, ISSUE, body="hi").parsed_data
    bad = httpx.post(
        f"{github.api_url}/repos/{FULL}/issues/comments/{comment.id}/reactions",
        headers={"Authorization": f"token {mint(github)}"},
        json={"content": "thumbs"},
    )
    assert bad.status_code == 422
    assert github.reactions == []


def test_unknown_routes_and_fault_injection(github):
    token = mint(github)
    headers = {"Authorization": f"token {token}"}
    unknown = httpx.get(f"{github.api_url}/repos/{FULL}/nonsense", headers=headers)
    assert unknown.status_code == 404
    assert unknown.json()["message"] == "Not Found"
    assert unknown.json()["documentation_url"].startswith("https://docs.github.com/")
    assert "x-github-request-id" in unknown.headers

    client = token_client(github, token)
    github.fail_next("POST", r"/issues/\d+/comments$", 502, times=2)
    for _ in range(2):
        assert (
            failure(
                lambda: client.rest.issues.create_comment(OWNER, REPO, ISSUE, body="x")
            ).response.status_code
            == 502
        )
    assert client.rest.issues.create_comment(OWNER, REPO, ISSUE, body="x").status_code == 201
    assert len(github.comments) == 1

    reset = str(int(time.time()) + 30)
    github.fail_next(
        "GET",
        rf"/repos/{FULL}$",
        403,
        headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset},
        body={"message": "API rate limit exceeded for installation ID 4242."},
    )
    limited = httpx.get(f"{github.api_url}/repos/{FULL}", headers=headers)
    assert limited.status_code == 403
    assert limited.headers["x-ratelimit-remaining"] == "0"
    assert limited.headers["x-ratelimit-reset"] == reset
    assert httpx.get(f"{github.api_url}/repos/{FULL}", headers=headers).status_code == 200
    templates = [r.template for r in github.responses if r.status == 502]
    assert templates == ["/repos/{owner}/{repo}/issues/{issue_number}/comments"] * 2


# --------------------------------------------------------------------------- git over HTTP


def test_clone_commit_push_branch_then_open_pull_request(github, tmp_path):
    token = mint(github)
    env, work = clone(github, tmp_path, token)
    assert (work / "src/widgets/__init__.py").read_text() == FILES["src/widgets/__init__.py"]
    # the token reached git only through the helper: nothing on disk holds it
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path
    assert git(env, "remote", "get-url", "origin", cwd=work).stdout.strip() == (
        f"{github.url}/{FULL}.git"
    )

    main_before = github.branches(FULL)["main"]
    git(env, "checkout", "--quiet", "-b", "claude/issue-7", cwd=work)
    sha = commit_file(env, work, "src/widgets/fix.py", "FIXED = True\n", "Fix the crash")
    git(env, "push", "--quiet", "origin", "claude/issue-7", cwd=work)

    assert github.branches(FULL) == {"main": main_before, "claude/issue-7": sha}
    assert github.read_file(FULL, "claude/issue-7", "src/widgets/fix.py") == "FIXED = True\n"
    assert github.read_file(FULL, "main", "src/widgets/fix.py") is None
    [push] = github.pushes
    assert push.repo == FULL and push.token == token
    assert push.refs == ["refs/heads/claude/issue-7"]
    assert not push.forced
    assert push.updates[0].created
    assert all(u.branch != "main" for u in push.updates)

    client = token_client(github, token)
    created = client.rest.pulls.create(
        OWNER,
        REPO,
        title="Fix crash on start",
        head="claude/issue-7",
        base="main",
        body="Closes #7",
    )
    assert created.status_code == 201
    pr = created.parsed_data
    assert pr.number == 8  # issues and pull requests share numbers
    assert (pr.head.ref, pr.head.sha, pr.base.ref) == ("claude/issue-7", sha, "main")
    assert pr.base.sha == main_before
    assert pr.user.login == github.bot_login and pr.user.type == "Bot"
    assert (pr.commits, pr.changed_files, pr.additions, pr.deletions) == (1, 1, 1, 0)
    assert pr.state == "open" and pr.merged is False and pr.draft is False
    assert created.headers["location"] == pr.url

    listed = client.rest.pulls.list(OWNER, REPO, head=f"{OWNER}:claude/issue-7").parsed_data
    assert [p.number for p in listed] == [8]
    assert client.rest.pulls.list(OWNER, REPO, head=f"{OWNER}:other").parsed_data == []
    assert client.rest.pulls.list(OWNER, REPO, state="closed").parsed_data == []
    assert client.rest.pulls.get(OWNER, REPO, 8).parsed_data.title == "Fix crash on start"
    as_issue = client.rest.issues.get(OWNER, REPO, 8).parsed_data
    assert as_issue.pull_request is not None
    client.rest.issues.create_comment(OWNER, REPO, 8, body="Ready for review")
    assert client.rest.pulls.get(OWNER, REPO, 8).parsed_data.comments == 1

    duplicate = failure(
        lambda: client.rest.pulls.create(
            OWNER, REPO, title="again", head="claude/issue-7", base="main"
        )
    )
    assert duplicate.response.status_code == 422
    assert duplicate.response.json()["errors"][0]["message"] == (
        f"A pull request already exists for {OWNER}:claude/issue-7."
    )
    no_branch = failure(
        lambda: client.rest.pulls.create(OWNER, REPO, title="t", head="nope", base="main")
    )
    assert no_branch.response.json()["errors"][0]["field"] == "head"
    same = failure(
        lambda: client.rest.pulls.create(OWNER, REPO, title="t", head="main", base="main")
    )
    assert same.response.status_code == 422
    assert len(github.pulls) == 1

    # a later push moves the pull request's head
    sha2 = commit_file(env, work, "src/widgets/fix.py", "FIXED = 2\n", "Refine")
    git(env, "push", "--quiet", "origin", "claude/issue-7", cwd=work)
    assert client.rest.pulls.get(OWNER, REPO, 8).parsed_data.head.sha == sha2
    assert [p.forced for p in github.pushes] == [False, False]
    assert github.branches(FULL)["main"] == main_before


def test_git_auth_like_github(github, tmp_path):
    (tmp_path / "home").mkdir()
    url = f"{github.url}/{FULL}.git"

    anonymous = httpx.get(f"{url}/info/refs", params={"service": "git-upload-pack"})
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == 'Basic realm="GitHub"'

    no_helper = git(git_env(tmp_path / "home", None), "clone", url, "a", cwd=tmp_path, check=False)
    assert no_helper.returncode != 0

    token = mint(github)
    wrong_user = git_env(tmp_path / "home", token, user="octocat")
    proc = git(wrong_user, "clone", url, "b", cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "Invalid username or token" in proc.stderr

    other_repo = git_env(tmp_path / "home", mint(github, repositories=[OTHER]))
    proc = git(other_repo, "clone", url, "c", cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "Repository not found" in proc.stderr

    no_contents = git_env(tmp_path / "home", mint(github, permissions={"issues": "write"}))
    proc = git(no_contents, "clone", url, "d", cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "denied" in proc.stderr

    expired = mint(github)
    github.expire_token(expired)
    proc = git(git_env(tmp_path / "home", expired), "clone", url, "e", cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "Authentication failed" in proc.stderr

    read_only = mint(github, permissions={"contents": "read"})
    env = git_env(tmp_path / "home", read_only)
    git(env, "clone", "--quiet", url, "f", cwd=tmp_path)
    work = tmp_path / "f"
    before = github.branches(FULL)
    git(env, "checkout", "--quiet", "-b", "sneaky", cwd=work)
    commit_file(env, work, "x.txt", "x\n", "x")
    proc = git(env, "push", "origin", "sneaky", cwd=work, check=False)
    assert proc.returncode != 0
    assert f"Permission to {FULL}.git denied to {github.bot_login}" in proc.stderr
    assert github.branches(FULL) == before
    assert github.pushes == []

    bad = httpx.get(
        f"{url}/info/refs",
        params={"service": "git-upload-pack"},
        auth=("x-access-token", "ghs_" + "a" * 36),
    )
    assert bad.status_code == 401


def test_push_rules_force_pushes_workflows_and_big_bodies(github, tmp_path):
    token = mint(github)
    env, work = clone(github, tmp_path, token)
    git(env, "checkout", "--quiet", "-b", "topic", cwd=work)
    first = commit_file(env, work, "a.txt", "a\n", "a")
    git(env, "push", "--quiet", "origin", "topic", cwd=work)

    # a workflow change needs `workflows: write`, like on GitHub
    commit_file(env, work, ".github/workflows/ci.yml", "on: pull_request\n", "ci")
    proc = git(env, "push", "origin", "topic", cwd=work, check=False)
    assert proc.returncode != 0
    assert "without `workflows` permission" in proc.stderr
    assert github.branches(FULL)["topic"] == first
    assert github.pushes[-1].refs == []

    # a force push is allowed (as on GitHub) and recorded as forced
    git(env, "reset", "--quiet", "--hard", "HEAD~2", cwd=work)
    rewritten = commit_file(env, work, "b.txt", "b\n", "b")
    git(env, "push", "--quiet", "--force", "origin", "topic", cwd=work)
    assert github.branches(FULL)["topic"] == rewritten
    assert github.pushes[-1].forced

    # a body larger than http.postBuffer travels chunked
    blob = base64.b64encode(os.urandom(3 * 1024 * 1024)).decode()
    big = commit_file(env, work, "big.txt", blob, "big")
    git(env, "push", "--quiet", "origin", "topic", cwd=work)
    assert github.branches(FULL)["topic"] == big
    assert github.read_file(FULL, "topic", "big.txt") == blob
    assert not github.pushes[-1].forced
    assert any(
        r.headers.get("Transfer-Encoding") == "chunked"
        for r in github.requests
        if r.path.endswith("/git-receive-pack")
    )

    # deleting a branch is a ref update with a zero new sha
    git(env, "push", "--quiet", "origin", "--delete", "topic", cwd=work)
    assert "topic" not in github.branches(FULL)
    assert github.pushes[-1].updates[0].deleted


def test_gzip_encoded_fetch_negotiation(github, tmp_path):
    token = mint(github)
    env, work = clone(github, tmp_path, token)
    # Many local commits -> many "have" lines -> a gzip request. They are dated after the
    # repository's first commit: with equal dates git may offer that common commit among the
    # first haves and end the negotiation before any request is large enough to be gzipped.
    start = int(time.time()) + 60
    for number in range(40):
        dated = {**env, "GIT_COMMITTER_DATE": f"{start + number} +0000"}
        commit_file(dated, work, "local.txt", f"{number}\n", f"local {number}")
    env2, work2 = clone(github, tmp_path, token, name="second")
    git(env2, "checkout", "--quiet", "-b", "fresh", cwd=work2)
    fresh = commit_file(env2, work2, "fresh.txt", "fresh\n", "fresh")
    git(env2, "push", "--quiet", "origin", "fresh", cwd=work2)

    git(env, "fetch", "--quiet", "origin", cwd=work)
    assert git(env, "rev-parse", "origin/fresh", cwd=work).stdout.strip() == fresh
    assert any(
        r.headers.get("Content-Encoding") == "gzip"
        for r in github.requests
        if r.path.endswith("/git-upload-pack")
    )

    # and a hand-made gzip body straight to git-upload-pack (protocol v0)
    want = github.branches(FULL)["main"]
    pkt = f"want {want} side-band-64k\n"
    request = f"{len(pkt) + 4:04x}{pkt}0000" + "0009done\n"
    resp = httpx.post(
        f"{github.url}/{FULL}.git/git-upload-pack",
        content=gzip.compress(request.encode()),
        headers={
            "Content-Type": "application/x-git-upload-pack-request",
            "Content-Encoding": "gzip",
        },
        auth=("x-access-token", token),
    )
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/x-git-upload-pack-result"
    assert b"PACK" in resp.content


# --------------------------------------------------------------------------- pull requests

CORE = "src/widgets/core.py"
CORE_TEXT = "".join(f"value_{i} = {i}\n" for i in range(1, 41))
TUNED = (
    CORE_TEXT.replace("value_10 = 10\n", "value_10 = 100\n").replace(
        "value_30 = 30\n", "value_30 = 300\n"
    )
    + "value_41 = 41\n"
)
FIRST_HUNK = "@@ -7,7 +7,7 @@ value_6 = 6\n value_7 = 7\n value_8 = 8\n value_9 = 9\n-value_10 = 10"


def open_pull(standin: GitHubStandIn):
    """alice's pull request: two changed lines and one added line in CORE (three hunks), an
    added file and a removed one."""
    standin.add_commit(FULL, "main", {CORE: CORE_TEXT}, "Add core", "alice")
    return standin.add_pull(
        FULL,
        NewPull(
            "alice/tune",
            "main",
            "Tune values",
            "Tunes two values.",
            "alice",
            files={CORE: TUNED, "docs/tuning.md": "# Tuning\n", "README.md": None},
            labels=["enhancement"],
        ),
    )


def test_repository_contents(github):
    pr = open_pull(github)
    client = token_client(github, mint(github, permissions={"contents": "read"}))

    readme = client.rest.repos.get_content(OWNER, REPO, "README.md").parsed_data
    assert type(readme).__name__ == "ContentFile"
    assert (readme.type, readme.encoding, readme.name, readme.path) == (
        "file",
        "base64",
        "README.md",
        "README.md",
    )
    assert base64.b64decode(readme.content) == FILES["README.md"].encode()
    assert all(len(line) <= 60 for line in readme.content.splitlines())
    assert readme.sha == github.git(FULL, "rev-parse", "main:README.md").strip()
    assert readme.size == len(FILES["README.md"])
    assert readme.url == f"{github.api_url}/repos/{FULL}/contents/README.md?ref=main"
    assert readme.git_url == f"{github.api_url}/repos/{FULL}/git/blobs/{readme.sha}"

    # a ref may be a branch or a commit; the head branch has the pull request's version
    for ref in ("alice/tune", pr.head_sha):
        core = client.rest.repos.get_content(OWNER, REPO, CORE, ref=ref).parsed_data
        assert base64.b64decode(core.content).decode() == TUNED
    gone = failure(lambda: client.rest.repos.get_content(OWNER, REPO, "README.md", ref=pr.head_sha))
    assert gone.response.status_code == 404
    assert gone.response.json()["message"] == "Not Found"
    bad_ref = failure(lambda: client.rest.repos.get_content(OWNER, REPO, CORE, ref="nope"))
    assert bad_ref.response.status_code == 404
    assert bad_ref.response.json()["message"] == "No commit found for the ref nope"

    listing = client.rest.repos.get_content(OWNER, REPO, "src/widgets").parsed_data
    assert [(e.name, e.type) for e in listing] == [("__init__.py", "file"), ("core.py", "file")]
    top = client.rest.repos.get_content(OWNER, REPO, ".github").parsed_data
    assert [(e.path, e.type, e.download_url) for e in top] == [(".github/workflows", "dir", None)]

    raw = client.rest.repos.get_content(
        OWNER, REPO, CORE, headers={"Accept": "application/vnd.github.raw+json"}
    )
    assert raw.text == CORE_TEXT
    assert raw.headers["content-type"].startswith("application/vnd.github.raw")

    big = b"x" * (1024 * 1024 + 1)  # over 1 MB: no inline content, like GitHub
    github.add_commit(FULL, "main", {"big.bin": big}, "Big file", "alice")
    large = client.rest.repos.get_content(OWNER, REPO, "big.bin").parsed_data
    assert (large.encoding, large.content, large.size) == ("none", "", len(big))

    no_contents = token_client(github, mint(github, permissions={"issues": "read"}))
    denied = failure(lambda: no_contents.rest.repos.get_content(OWNER, REPO, "README.md"))
    assert denied.response.status_code == 403
    assert denied.response.headers["x-accepted-github-permissions"] == "contents=read"
    other = token_client(github, mint(github, repositories=[OTHER]))
    outside = failure(lambda: other.rest.repos.get_content(OWNER, REPO, "README.md"))
    assert outside.response.status_code == 404


def test_pull_request_files_diff_commits_and_labels(github):
    pr = open_pull(github)
    assert pr.number == ISSUE + 1  # issues and pull requests share numbers
    assert github.pull(FULL, pr.number) is pr and pr in github.pulls
    reader = token_client(
        github, mint(github, permissions={"pull_requests": "read", "issues": "read"})
    )

    got = reader.rest.pulls.get(OWNER, REPO, pr.number).parsed_data
    assert (got.head.ref, got.head.sha, got.base.ref) == ("alice/tune", pr.head_sha, "main")
    assert got.head.sha == github.branches(FULL)["alice/tune"]
    assert got.base.sha == github.branches(FULL)["main"]
    assert got.head.repo.full_name == got.base.repo.full_name == FULL
    assert got.head.repo.fork is False and got.head.label == f"{OWNER}:alice/tune"
    assert (got.user.login, got.author_association) == ("alice", "COLLABORATOR")
    assert (got.title, got.body) == ("Tune values", "Tunes two values.")
    assert [label.name for label in got.labels] == ["enhancement"]
    assert (got.commits, got.changed_files, got.additions, got.deletions) == (1, 3, 4, 3)

    files = {
        f.filename: f for f in reader.rest.pulls.list_files(OWNER, REPO, pr.number).parsed_data
    }
    assert {name: f.status for name, f in files.items()} == {
        CORE: "modified",
        "docs/tuning.md": "added",
        "README.md": "removed",
    }
    core = files[CORE]
    assert (core.additions, core.deletions, core.changes) == (3, 2, 5)
    assert core.patch.startswith(FIRST_HUNK + "\n+value_10 = 100\n")
    assert core.patch.count("@@ -") == 3 and not core.patch.endswith("\n")
    assert core.sha == github.git(FULL, "rev-parse", f"{pr.head_sha}:{CORE}").strip()
    assert core.contents_url == (f"{github.api_url}/repos/{FULL}/contents/{CORE}?ref={pr.head_sha}")
    assert files["docs/tuning.md"].patch == "@@ -0,0 +1 @@\n+# Tuning"
    assert files["README.md"].patch == "@@ -1 +0,0 @@\n-# widgets"

    diff = reader.rest.pulls.get(
        OWNER, REPO, pr.number, headers={"Accept": "application/vnd.github.diff"}
    )
    assert diff.headers["content-type"] == "application/vnd.github.diff; charset=utf-8"
    assert diff.text == github.git(FULL, "diff", f"main...{pr.head_sha}")
    assert diff.text.startswith("diff --git a/README.md b/README.md\ndeleted file mode 100644\n")
    assert f"diff --git a/{CORE} b/{CORE}\n" in diff.text and "+value_41 = 41\n" in diff.text

    [commit] = reader.rest.pulls.list_commits(OWNER, REPO, pr.number).parsed_data
    assert commit.sha == pr.head_sha
    assert commit.commit.message == "Tune values"
    assert commit.author.login == commit.committer.login == "alice"
    alice = github.add_user("alice")
    assert commit.commit.author.email == github.noreply_email(alice)
    assert [p.sha for p in commit.parents] == [github.branches(FULL)["main"]]

    # a pull request is an issue: labels, and the conversation lives in its issue comments
    as_issue = reader.rest.issues.get(OWNER, REPO, pr.number).parsed_data
    assert as_issue.pull_request is not None
    assert [label.name for label in as_issue.labels] == ["enhancement"]
    talk = github.add_comment(FULL, pr.number, "Looks reasonable", "alice")
    [listed] = reader.rest.issues.list_comments(OWNER, REPO, pr.number).parsed_data
    assert listed.id == talk.id and f"/pull/{pr.number}#issuecomment-" in listed.html_url
    assert reader.rest.pulls.get(OWNER, REPO, pr.number).parsed_data.comments == 1
    [simple] = reader.rest.pulls.list(OWNER, REPO).parsed_data
    assert simple.number == pr.number and [label.name for label in simple.labels] == ["enhancement"]

    # the author pushes again: the pull request and refs/pull/N/head follow
    again = github.add_commit(
        FULL, "alice/tune", {CORE: TUNED + "value_42 = 42\n"}, "More", "alice"
    )
    moved = reader.rest.pulls.get(OWNER, REPO, pr.number).parsed_data
    assert (moved.head.sha, moved.commits) == (again, 2)
    assert github.git(FULL, "rev-parse", f"refs/pull/{pr.number}/head").strip() == again
    assert github.pull(FULL, pr.number).head_sha == again

    no_pulls = token_client(github, mint(github, permissions={"issues": "read"}))
    for call in (
        lambda: no_pulls.rest.pulls.get(OWNER, REPO, pr.number),
        lambda: no_pulls.rest.pulls.list_files(OWNER, REPO, pr.number),
        lambda: no_pulls.rest.pulls.list_commits(OWNER, REPO, pr.number),
    ):
        denied = failure(call).response
        assert denied.status_code == 403
        assert denied.headers["x-accepted-github-permissions"] == "pull_requests=read"
    assert failure(lambda: reader.rest.pulls.get(OWNER, REPO, 999)).response.status_code == 404


def test_fork_pull_request_head_comes_through_the_base_repository(github, tmp_path):
    pr = github.add_pull(
        FULL,
        NewPull(
            "fix-typo",
            title="Fix typo",
            user_login="mallory",
            files={"README.md": "# widgets!\n"},
            fork_full_name="mallory/widgets",
        ),
    )
    assert pr.is_fork and pr in github.pulls
    assert github.repo("mallory/widgets").parent is github.repo(FULL)
    token = mint(github)
    client = token_client(github, token)

    got = client.rest.pulls.get(OWNER, REPO, pr.number).parsed_data
    assert got.head.repo.full_name == "mallory/widgets" and got.head.repo.fork is True
    assert got.head.repo.clone_url == f"{github.url}/mallory/widgets.git"
    assert got.head.repo.owner.login == got.head.user.login == got.user.login == "mallory"
    assert got.head.repo.permissions is UNSET  # the installation has no access to the fork
    assert (got.head.label, got.head.sha) == ("mallory:fix-typo", pr.head_sha)
    assert got.base.repo.full_name == FULL and got.base.repo.fork is False
    assert got.base.repo.permissions.push is True
    assert got.author_association == "NONE"
    listed = client.rest.pulls.list(OWNER, REPO, head="mallory:fix-typo").parsed_data
    assert [p.number for p in listed] == [pr.number]
    assert client.rest.pulls.list(OWNER, REPO, head=f"{OWNER}:fix-typo").parsed_data == []
    [readme] = client.rest.pulls.list_files(OWNER, REPO, pr.number).parsed_data
    assert (readme.filename, readme.status) == ("README.md", "modified")
    assert github.branches("mallory/widgets")["fix-typo"] == pr.head_sha
    assert "fix-typo" not in github.branches(FULL)

    # the worker fetches the head through the base repository, as on GitHub
    env, work = clone(github, tmp_path, token)
    advertised = git(env, "ls-remote", "origin", cwd=work).stdout
    assert f"{pr.head_sha}\trefs/pull/{pr.number}/head" in advertised.splitlines()
    pull_ref = f"refs/pull/{pr.number}/head"
    git(env, "fetch", "--quiet", "--no-tags", "--depth", "1", "origin", pull_ref, cwd=work)
    assert git(env, "rev-parse", "FETCH_HEAD", cwd=work).stdout.strip() == pr.head_sha
    git(env, "checkout", "--quiet", "-b", "fork-head", "FETCH_HEAD", cwd=work)
    assert (work / "README.md").read_text() == "# widgets!\n"

    # … but the fork itself is out of the installation's reach, for REST and for git
    commit_file(env, work, "README.md", "# widgets?\n", "Push to the fork")
    fork_url = got.head.repo.clone_url
    pushed = git(env, "push", fork_url, "HEAD:refs/heads/fix-typo", cwd=work, check=False)
    assert pushed.returncode != 0 and "Repository not found" in pushed.stderr
    fetched = git(env, "fetch", fork_url, "fix-typo", cwd=work, check=False)
    assert fetched.returncode != 0 and "Repository not found" in fetched.stderr
    assert github.branches("mallory/widgets")["fix-typo"] == pr.head_sha
    assert failure(lambda: client.rest.repos.get("mallory", "widgets")).response.status_code == 404
    app = app_client(github)
    uninstalled = failure(lambda: app.rest.apps.get_repo_installation("mallory", "widgets"))
    assert uninstalled.response.status_code == 404
    # refs/pull/* cannot be pushed, as on GitHub
    hidden = git(env, "push", "origin", f"HEAD:{pull_ref}", cwd=work, check=False)
    assert hidden.returncode != 0 and "hidden ref" in hidden.stderr
    assert github.git(FULL, "rev-parse", pull_ref).strip() == pr.head_sha

    # the author pushes to the fork: the pull request and refs/pull/N/head follow
    again = github.add_commit("mallory/widgets", "fix-typo", {"README.md": "# Widgets\n"}, "Case")
    assert client.rest.pulls.get(OWNER, REPO, pr.number).parsed_data.head.sha == again
    git(env, "fetch", "--quiet", "origin", pull_ref, cwd=work)
    assert git(env, "rev-parse", "FETCH_HEAD", cwd=work).stdout.strip() == again

    # a second pull request from the same fork reuses it; a duplicate is refused
    second = github.add_pull(
        FULL,
        NewPull(
            "docs",
            title="Docs",
            user_login="mallory",
            files={"docs/a.md": "a\n"},
            fork_full_name="mallory/widgets",
        ),
    )
    assert second.head_repository is pr.head_repository
    duplicate = failure(
        lambda: client.rest.pulls.create(OWNER, REPO, title="t", head="mallory:docs", base="main")
    )
    assert duplicate.response.json()["errors"][0]["message"] == (
        "A pull request already exists for mallory:docs."
    )


def test_reviews_with_inline_comments(github):
    pr = open_pull(github)
    client = token_client(github, mint(github))
    head = pr.head_sha

    created = client.rest.pulls.create_review(
        OWNER,
        REPO,
        pr.number,
        commit_id=head,
        body="A few notes.",
        event="REQUEST_CHANGES",
        comments=[
            {"path": CORE, "line": 10, "side": "RIGHT", "body": "Why 100?"},
            {
                "path": CORE,
                "start_line": 8,
                "start_side": "RIGHT",
                "line": 10,
                "side": "RIGHT",
                "body": "This block",
            },
            {"path": CORE, "line": 30, "side": "LEFT", "body": "30 was fine"},
            {"path": "docs/tuning.md", "line": 1, "body": "Title?"},
        ],
    )
    assert created.status_code == 200
    review = created.parsed_data
    assert (review.state, review.commit_id, review.body) == (
        "CHANGES_REQUESTED",
        head,
        "A few notes.",
    )
    assert review.user.login == github.bot_login and review.submitted_at is not None
    assert review.html_url.endswith(f"/pull/{pr.number}#pullrequestreview-{review.id}")

    comments = client.rest.pulls.list_comments_for_review(OWNER, REPO, pr.number, review.id)
    inline = comments.parsed_data
    assert [(c.path, c.start_line, c.line, c.side) for c in inline] == [
        (CORE, None, 10, "RIGHT"),
        (CORE, 8, 10, "RIGHT"),
        (CORE, None, 30, "LEFT"),
        ("docs/tuning.md", None, 1, "RIGHT"),
    ]
    first, block, left, title = inline
    assert first.diff_hunk == FIRST_HUNK + "\n+value_10 = 100"
    assert (first.position, first.original_line, first.commit_id) == (5, 10, head)
    assert first.pull_request_review_id == review.id and first.in_reply_to_id is UNSET
    assert (block.start_side, block.diff_hunk) == ("RIGHT", first.diff_hunk)
    assert left.diff_hunk.endswith("\n-value_30 = 30") and left.diff_hunk.startswith("@@ -27,7")
    assert title.diff_hunk == "@@ -0,0 +1 @@\n+# Tuning"
    everything = client.rest.pulls.list_review_comments(OWNER, REPO, pr.number).parsed_data
    assert [c.id for c in everything] == [c.id for c in inline]
    assert [c.id for c in github.review_comments] == [c.id for c in inline]
    fetched = client.rest.pulls.get_review(OWNER, REPO, pr.number, review.id).parsed_data
    assert fetched.state == "CHANGES_REQUESTED"
    assert client.rest.pulls.get(OWNER, REPO, pr.number).parsed_data.review_comments == 4

    # the single-comment endpoint: its own COMMENTED review
    single = client.rest.pulls.create_review_comment(
        OWNER, REPO, pr.number, body="nit", commit_id=head, path=CORE, line=41, side="RIGHT"
    )
    assert single.status_code == 201 and single.headers["location"] == single.parsed_data.url
    assert single.parsed_data.pull_request_review_id != review.id
    approved = client.rest.pulls.create_review(OWNER, REPO, pr.number, event="APPROVE")
    assert approved.parsed_data.state == "APPROVED"
    states = [r.state for r in client.rest.pulls.list_reviews(OWNER, REPO, pr.number).parsed_data]
    assert states == ["CHANGES_REQUESTED", "COMMENTED", "APPROVED"]
    assert [r.state for r in github.reviews] == states

    # a comment outside the diff: the whole review is refused with GitHub's words
    def refused(comments, **extra):
        return failure(
            lambda: client.rest.pulls.create_review(
                OWNER, REPO, pr.number, body="x", event="COMMENT", comments=comments, **extra
            )
        ).response

    outside = refused([{"path": CORE, "line": 20, "body": "not in a hunk"}])
    assert outside.status_code == 422
    assert outside.json()["message"] == "Unprocessable Entity"
    assert outside.json()["errors"] == ["Line could not be resolved"]
    many = refused(
        [
            {"path": CORE, "line": 20, "body": "a"},
            {"path": "src/widgets/__init__.py", "line": 1, "body": "untouched file"},
            {"path": CORE, "line": 10, "body": "fine"},
            {"path": CORE, "line": 10, "side": "LEFT", "body": "fine too"},
            {"path": CORE, "line": 41, "side": "LEFT", "body": "no such old line"},
        ]
    )
    assert many.json()["errors"] == [
        "Line could not be resolved, Path could not be resolved, and Line could not be resolved"
    ]
    across = refused([{"path": CORE, "start_line": 9, "line": 29, "body": "two hunks"}])
    assert across.json()["errors"] == ["Start line must be part of the same hunk as the line"]
    stale = refused([], commit_id="0" * 40)
    assert stale.json()["errors"] == ["The commitOID is not part of the pull request"]
    bad_event = httpx.post(
        f"{github.api_url}/repos/{FULL}/pulls/{pr.number}/reviews",
        headers={"Authorization": f"token {mint(github)}"},
        json={"event": "LGTM", "body": "x"},
    )
    assert bad_event.status_code == 422
    assert bad_event.json()["errors"] == [
        "Variable $event of type PullRequestReviewEvent was provided invalid value"
    ]
    outside_single = failure(
        lambda: client.rest.pulls.create_review_comment(
            OWNER, REPO, pr.number, body="x", commit_id=head, path=CORE, line=20
        )
    ).response
    assert outside_single.status_code == 422
    assert outside_single.json()["message"] == "Validation Failed"
    assert outside_single.json()["errors"][0]["field"] == "pull_request_review_thread.line"
    assert outside_single.json()["errors"][0]["message"] == (
        "pull_request_review_thread.line must be part of the diff"
    )
    assert len(github.reviews) == 3 and len(github.review_comments) == 5

    # the App cannot approve or request changes on its own pull request
    own = github.add_pull(
        FULL,
        NewPull("bot-branch", title="Bot", user_login=github.bot_login, files={"bot.txt": "bot\n"}),
    )
    for event, words in (("APPROVE", "approve"), ("REQUEST_CHANGES", "request changes on")):
        refusal = failure(
            lambda event=event: client.rest.pulls.create_review(
                OWNER, REPO, own.number, event=event, body="x"
            )
        ).response
        assert refusal.json()["errors"] == [f"Review Can not {words} your own pull request"]
    assert client.rest.pulls.create_review(OWNER, REPO, own.number, event="COMMENT", body="ok")

    read_only = token_client(github, mint(github, permissions={"pull_requests": "read"}))
    denied = failure(
        lambda: read_only.rest.pulls.create_review(
            OWNER, REPO, pr.number, event="COMMENT", body="x"
        )
    ).response
    assert denied.status_code == 403
    assert denied.headers["x-accepted-github-permissions"] == "pull_requests=write"


def test_review_comment_threads_replies_and_reactions(github):
    pr = open_pull(github)
    review = github.add_review(
        FULL,
        pr.number,
        "Please look.",
        "alice",
        comments=[
            {"path": CORE, "line": 10, "body": "Why 100?"},
            {"path": CORE, "line": 41, "body": "New line"},
        ],
    )
    root = github.add_review_comment(
        FULL, pr.number, {"path": CORE, "line": 30, "body": "/claude explain this"}, "alice"
    )
    human = github.add_review_reply(FULL, pr.number, root.id, "+1", "mallory")
    assert (human.in_reply_to_id, human.line, human.diff_hunk) == (root.id, 30, root.diff_hunk)
    assert root.review_id not in (review.id, human.review_id)
    with pytest.raises(ValueError, match="Line could not be resolved"):
        github.add_review_comment(
            FULL, pr.number, {"path": CORE, "line": 20, "body": "outside"}, "alice"
        )

    client = token_client(github, mint(github))
    listed = client.rest.pulls.list_review_comments(OWNER, REPO, pr.number).parsed_data
    assert [c.id for c in listed] == [c.id for c in github.review_comments]
    got = client.rest.pulls.get_review_comment(OWNER, REPO, root.id).parsed_data
    assert (got.user.login, got.author_association, got.body) == (
        "alice",
        "COLLABORATOR",
        "/claude explain this",
    )
    assert got.diff_hunk.startswith("@@ -27,7 +27,7 @@") and got.diff_hunk.endswith(
        "+value_30 = 300"
    )
    assert got.html_url == f"{github.url}/{FULL}/pull/{pr.number}#discussion_r{root.id}"
    assert got.pull_request_url == f"{github.api_url}/repos/{FULL}/pulls/{pr.number}"
    for_review = client.rest.pulls.list_comments_for_review(OWNER, REPO, pr.number, review.id)
    assert [c.body for c in for_review.parsed_data] == ["Why 100?", "New line"]

    created = client.rest.pulls.create_reply_for_review_comment(
        OWNER, REPO, pr.number, root.id, body="Because it was tuned."
    )
    assert created.status_code == 201
    reply = created.parsed_data
    assert created.headers["location"] == reply.url
    assert (reply.in_reply_to_id, reply.path, reply.line, reply.side) == (
        root.id,
        CORE,
        30,
        "RIGHT",
    )
    assert reply.user.login == github.bot_login
    assert reply.pull_request_review_id not in (root.review_id, human.review_id)
    nested = client.rest.pulls.create_reply_for_review_comment(
        OWNER, REPO, pr.number, human.id, body="Thanks"
    ).parsed_data
    assert nested.in_reply_to_id == root.id  # a reply to a reply joins the thread
    for missing_id, number in ((999, pr.number), (root.id, ISSUE)):
        lost = failure(
            lambda missing_id=missing_id, number=number: (
                client.rest.pulls.create_reply_for_review_comment(
                    OWNER, REPO, number, missing_id, body="?"
                )
            )
        ).response
        assert lost.status_code == 404

    edited = client.rest.pulls.update_review_comment(OWNER, REPO, reply.id, body="Tuned.")
    assert edited.parsed_data.body == "Tuned." and edited.parsed_data.id == reply.id

    eyes = client.rest.reactions.create_for_pull_request_review_comment(
        OWNER, REPO, root.id, content="eyes"
    )
    assert eyes.status_code == 201 and eyes.parsed_data.content == "eyes"
    again = client.rest.reactions.create_for_pull_request_review_comment(
        OWNER, REPO, root.id, content="eyes"
    )
    assert again.status_code == 200 and again.parsed_data.id == eyes.parsed_data.id
    assert (
        client.rest.pulls.get_review_comment(OWNER, REPO, root.id).parsed_data.reactions.eyes == 1
    )
    assert [(r.subject, r.comment_id) for r in github.reactions] == [("review_comment", root.id)]

    reviews = client.rest.pulls.list_reviews(OWNER, REPO, pr.number).parsed_data
    assert [(r.user.login, r.state, r.body) for r in reviews] == [
        ("alice", "COMMENTED", "Please look."),
        ("alice", "COMMENTED", ""),
        ("mallory", "COMMENTED", ""),
        (github.bot_login, "COMMENTED", ""),
        (github.bot_login, "COMMENTED", ""),
    ]
    assert [r.id for r in github.reviews] == [r.id for r in reviews]

    read_only = token_client(github, mint(github, permissions={"pull_requests": "read"}))
    for call in (
        lambda: read_only.rest.pulls.create_reply_for_review_comment(
            OWNER, REPO, pr.number, root.id, body="x"
        ),
        lambda: read_only.rest.reactions.create_for_pull_request_review_comment(
            OWNER, REPO, root.id, content="eyes"
        ),
        lambda: read_only.rest.pulls.update_review_comment(OWNER, REPO, reply.id, body="x"),
    ):
        assert failure(call).response.status_code == 403
    other = token_client(github, mint(github, repositories=[OTHER]))
    outside = failure(lambda: other.rest.pulls.get_review_comment(OWNER, REPO, root.id))
    assert outside.response.status_code == 404


# --------------------------------------------------------------------------- OpenAPI checks


def _all_endpoints(standin: GitHubStandIn, tmp_path: Path) -> None:
    """Exercise every endpoint (successes and typical errors) once."""
    app = app_client(standin)
    app.rest.apps.get_authenticated()
    app.rest.apps.list_installations()
    app.rest.apps.get_repo_installation(OWNER, REPO)
    token = mint(standin)
    client = token_client(standin, token)
    client.rest.repos.get(OWNER, REPO)
    client.rest.issues.get(OWNER, REPO, ISSUE)
    comment = client.rest.issues.create_comment(OWNER, REPO, ISSUE, body="x").parsed_data
    client.rest.issues.list_comments(OWNER, REPO, ISSUE)
    client.rest.issues.get_comment(OWNER, REPO, comment.id)
    client.rest.issues.update_comment(OWNER, REPO, comment.id, body="y")
    client.rest.reactions.create_for_issue_comment(OWNER, REPO, comment.id, content="rocket")
    client.rest.reactions.create_for_issue_comment(OWNER, REPO, comment.id, content="rocket")
    client.rest.users.get_by_username("alice")
    client.rest.repos.get_collaborator_permission_level(OWNER, REPO, "alice")
    env, work = clone(standin, tmp_path, token)
    git(env, "checkout", "--quiet", "-b", "feature", cwd=work)
    commit_file(env, work, "f.txt", "f\n", "f")
    git(env, "push", "--quiet", "origin", "feature", cwd=work)
    pr = client.rest.pulls.create(OWNER, REPO, title="t", head="feature", base="main").parsed_data
    client.rest.pulls.list(OWNER, REPO, head=f"{OWNER}:feature", per_page=1)
    client.rest.pulls.get(OWNER, REPO, pr.number)
    client.rest.repos.get_content(OWNER, REPO, "README.md")
    client.rest.repos.get_content(OWNER, REPO, "src", ref="feature")
    client.rest.repos.get_content(
        OWNER, REPO, "f.txt", ref="feature", headers={"Accept": "application/vnd.github.raw+json"}
    )
    theirs = open_pull(standin)
    check = client.rest.checks.create(
        OWNER, REPO, name="Claude", head_sha=theirs.head_sha, external_id="e"
    ).parsed_data
    client.rest.checks.update(OWNER, REPO, check.id, data={"conclusion": "success"})
    client.rest.checks.get(OWNER, REPO, check.id)
    client.rest.checks.list_for_ref(OWNER, REPO, theirs.head_sha)
    fork = standin.add_pull(
        FULL,
        NewPull(
            "fork-fix",
            title="Fork",
            user_login="mallory",
            files={"f.txt": "fork\n"},
            fork_full_name="mallory/widgets",
        ),
    )
    client.rest.pulls.list(OWNER, REPO, state="all")
    for number in (theirs.number, fork.number):
        client.rest.pulls.get(OWNER, REPO, number)
        client.rest.pulls.get(
            OWNER, REPO, number, headers={"Accept": "application/vnd.github.diff"}
        )
        client.rest.pulls.list_files(OWNER, REPO, number)
        client.rest.pulls.list_commits(OWNER, REPO, number)
    review = client.rest.pulls.create_review(
        OWNER,
        REPO,
        theirs.number,
        event="REQUEST_CHANGES",
        body="r",
        comments=[
            {"path": CORE, "line": 10, "body": "c"},
            {"path": CORE, "start_line": 8, "line": 10, "body": "m"},
        ],
    ).parsed_data
    client.rest.pulls.list_reviews(OWNER, REPO, theirs.number)
    client.rest.pulls.get_review(OWNER, REPO, theirs.number, review.id)
    client.rest.pulls.list_comments_for_review(OWNER, REPO, theirs.number, review.id)
    human = standin.add_review_comment(
        FULL, theirs.number, {"path": CORE, "line": 30, "body": "h"}, "alice"
    )
    standin.add_review(
        FULL, theirs.number, "", "alice", comments=[{"path": CORE, "line": 41, "body": "x"}]
    )
    client.rest.pulls.list_review_comments(OWNER, REPO, theirs.number)
    client.rest.pulls.get_review_comment(OWNER, REPO, human.id)
    reply = client.rest.pulls.create_reply_for_review_comment(
        OWNER, REPO, theirs.number, human.id, body="r"
    ).parsed_data
    client.rest.pulls.update_review_comment(OWNER, REPO, reply.id, body="r2")
    client.rest.pulls.create_review_comment(
        OWNER, REPO, theirs.number, body="s", commit_id=theirs.head_sha, path=CORE, line=41
    )
    for _ in range(2):
        client.rest.reactions.create_for_pull_request_review_comment(
            OWNER, REPO, human.id, content="heart"
        )
    read_only = token_client(standin, mint(standin, permissions={"pull_requests": "read"}))
    bogus = token_client(standin, "ghs_bad")
    for call in (
        lambda: client.rest.pulls.create(OWNER, REPO, title="t", head="feature", base="main"),
        lambda: client.rest.issues.get(OWNER, REPO, 404),
        lambda: client.rest.users.get_by_username("nobody-here"),
        lambda: app.rest.apps.create_installation_access_token(INSTALLATION, repositories=["x"]),
        lambda: bogus.rest.repos.get(OWNER, REPO),
        lambda: client.rest.repos.get_content(OWNER, REPO, "nope.txt"),
        lambda: read_only.rest.repos.get_content(OWNER, REPO, "README.md"),
        lambda: client.rest.pulls.get(OWNER, REPO, 999),
        lambda: client.rest.checks.create(OWNER, REPO, name="x", head_sha="0" * 40),
        lambda: read_only.rest.checks.get(OWNER, REPO, check.id),
        lambda: client.rest.checks.update(OWNER, REPO, 1, status="queued"),
        lambda: client.rest.pulls.create_review(
            OWNER,
            REPO,
            theirs.number,
            event="COMMENT",
            body="x",
            comments=[{"path": CORE, "line": 20, "body": "outside"}],
        ),
        lambda: client.rest.pulls.create_review_comment(
            OWNER, REPO, theirs.number, body="x", commit_id=theirs.head_sha, path=CORE, line=20
        ),
        lambda: read_only.rest.pulls.create_review(OWNER, REPO, theirs.number, event="COMMENT"),
        lambda: client.rest.pulls.create_reply_for_review_comment(
            OWNER, REPO, theirs.number, 1, body="x"
        ),
        lambda: client.rest.pulls.get_review_comment(OWNER, REPO, 1),
        lambda: client.rest.pulls.list_comments_for_review(OWNER, REPO, theirs.number, 1),
        lambda: client.rest.reactions.create_for_pull_request_review_comment(
            OWNER, REPO, 1, content="eyes"
        ),
    ):
        failure(call)
    client.rest.apps.revoke_installation_access_token()


def test_every_recorded_response_matches_openapi(github, openapi_specs, tmp_path):
    _all_endpoints(github, tmp_path)
    count = validate_all(github, openapi_specs)
    assert count == len(github.responses) >= 20
    seen = {(r.method, r.template) for r in github.responses if 200 <= r.status < 300}
    missing = set(ROUTES) - seen
    assert not missing, f"endpoints never answered successfully: {sorted(missing)}"
    statuses = {r.status for r in github.responses}
    assert {200, 201, 204, 401, 403, 404, 422} <= statuses
    media = {r.media_type for r in github.responses}
    assert {
        "application/json",
        "application/vnd.github.diff",
        "application/vnd.github.raw",
    } <= media


def test_validator_rejects_broken_bodies(github, openapi_specs):
    client = token_client(github, mint(github))
    comment = client.rest.issues.create_comment(OWNER, REPO, ISSUE, body="x")
    good = comment.json()
    template = "/repos/{owner}/{repo}/issues/{issue_number}/comments"
    for spec in openapi_specs:
        openapi.validate_response("POST", template, 201, good, spec=spec)

    broken = dict(good, user=dict(good["user"], login=None))
    with pytest.raises(openapi.OpenAPIValidationError, match=r"\$\.user") as info:
        openapi.validate_response("POST", template, 201, broken)
    assert "login" in str(info.value) or "None" in str(info.value)

    no_id = {k: v for k, v in good.items() if k != "id"}
    with pytest.raises(openapi.OpenAPIValidationError, match="'id' is a required property"):
        openapi.validate_response("POST", template, 201, no_id)

    bad_date = dict(good, created_at="yesterday")
    with pytest.raises(openapi.OpenAPIValidationError, match=r"\$\.created_at"):
        openapi.validate_response("POST", template, 201, bad_date)

    bad_enum = dict(good, author_association="FRIEND")
    with pytest.raises(openapi.OpenAPIValidationError, match=r"\$\.author_association"):
        openapi.validate_response("POST", template, 201, bad_enum)

    # nullable handled: null allowed where the description says nullable, refused elsewhere
    openapi.validate_response("POST", template, 201, dict(good, performed_via_github_app=None))
    with pytest.raises(openapi.OpenAPIValidationError, match=r"\$\.node_id"):
        openapi.validate_response("POST", template, 201, dict(good, node_id=None))

    # the translated schemas are valid JSON Schema 2020-12
    for method, path, status in [
        ("POST", template, 201),
        ("GET", "/repos/{owner}/{repo}/pulls/{pull_number}", 200),
        ("GET", "/users/{username}", 200),
    ]:
        Draft202012Validator.check_schema(openapi.response_schema(method, path, status))

    with pytest.raises(openapi.OpenAPIValidationError, match="does not document"):
        openapi.validate_response("POST", template, 299, good)
    with pytest.raises(openapi.OpenAPIValidationError, match="expected no body"):
        openapi.validate_response("DELETE", "/installation/token", 204, {"x": 1})


def test_missing_openapi_package_fails_with_instructions(monkeypatch, tmp_path):
    monkeypatch.setattr(openapi, "PACKAGE_DIR", tmp_path / "nowhere")
    with pytest.raises(openapi.OpenAPISpecMissing, match=r"bash scripts/test-deps\.sh"):
        openapi._check_installed(openapi.DEFAULT_SPEC)


# --------------------------------------------------------------------------- check runs


def raw(standin: GitHubStandIn, token: str, method: str, path: str, body: dict) -> httpx.Response:
    """A request githubkit would refuse to send (its models check the body first)."""
    headers = {"Authorization": f"token {token}", "Accept": "application/vnd.github+json"}
    return httpx.request(method, f"{standin.api_url}{path}", json=body, headers=headers)


def test_check_runs_are_created_updated_and_listed_as_github_does(github):
    token = mint(github)
    client = token_client(github, token)
    head = github.branches(FULL)["main"]
    stop = {"label": "Stop", "identifier": "stop", "description": "Stop the session"}
    created = client.rest.checks.create(
        OWNER,
        REPO,
        data={"name": "Claude", "head_sha": head, "external_id": "session-1", "actions": [stop]},
    ).parsed_data
    assert (created.status, created.conclusion, created.external_id) == (
        "queued",
        None,
        "session-1",
    )
    assert created.app is not None and created.app.id == github.app_id
    client.rest.checks.update(OWNER, REPO, created.id, data={"status": "in_progress"})
    assert github.press(created.id, "stop") == {"identifier": "stop"}
    with pytest.raises(AssertionError, match="not completed"):
        github.rerequestable(created.id)

    # Completed needs a conclusion; a conclusion alone completes the run.
    path = f"/repos/{FULL}/check-runs/{created.id}"
    missing = raw(github, token, "PATCH", path, {"status": "completed"})
    assert missing.status_code == 422 and "conclusion" in missing.json()["message"]
    output = {"title": "Claude pushed a commit", "summary": "Done in 3s"}
    done = client.rest.checks.update(
        OWNER, REPO, created.id, data={"conclusion": "success", "output": output, "actions": []}
    ).parsed_data
    assert (done.status, done.conclusion, done.output.title) == (
        "completed",
        "success",
        output["title"],
    )
    assert done.completed_at is not None
    with pytest.raises(AssertionError, match="no 'stop' button"):
        github.press(created.id, "stop")
    github.rerequestable(created.id)

    [record] = github.check_runs_of(FULL)
    assert [(s.status, s.conclusion, s.actions) for s in record.history] == [
        ("queued", None, ("stop",)),
        ("in_progress", None, ("stop",)),
        ("completed", "success", ()),
    ]
    assert client.rest.checks.get(OWNER, REPO, created.id).parsed_data.conclusion == "success"
    listed = client.rest.checks.list_for_ref(OWNER, REPO, "main").parsed_data
    assert (listed.total_count, [r.id for r in listed.check_runs]) == (1, [created.id])
    assert client.rest.checks.list_for_ref(OWNER, REPO, head, check_name="other").json() == {
        "total_count": 0,
        "check_runs": [],
    }


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"name": None}, "name"),
        ({"name": "  "}, "name"),
        ({"head_sha": "0" * 40}, "No commit found"),
        ({"head_sha": "main"}, "No commit found"),
        ({"status": "running"}, "status"),
        ({"conclusion": "maybe"}, "conclusion"),
        ({"conclusion": "stale"}, "stale"),
        ({"status": "completed"}, "conclusion"),
        ({"completed_at": "2026-12-04T01:00:00Z"}, "conclusion"),
        (
            {
                "actions": [
                    {"label": "x", "identifier": f"a{i}", "description": "d"} for i in range(4)
                ]
            },
            "more than 3",
        ),
        ({"actions": [{"label": "L" * 21, "identifier": "a", "description": "d"}]}, "label"),
        ({"actions": [{"label": "L", "identifier": "i" * 21, "description": "d"}]}, "identifier"),
        ({"actions": [{"label": "L", "identifier": "i", "description": "d" * 41}]}, "description"),
        ({"actions": [{"label": "L", "identifier": "i"}]}, "description"),
        ({"output": {"title": "t"}}, "summary"),
        ({"output": {"title": "t", "summary": "s" * 65536}}, "summary"),
    ],
)
def test_a_check_run_github_would_refuse_is_refused_with_422(github, change, detail):
    data = {"name": "Claude", "head_sha": github.branches(FULL)["main"], **change}
    data = {k: v for k, v in data.items() if v is not None}
    refused = raw(github, mint(github), "POST", f"/repos/{FULL}/check-runs", data)
    assert refused.status_code == 422
    assert detail in refused.json()["message"]
    assert github.check_runs_of(FULL) == []


def test_check_runs_need_the_checks_permission_of_a_token_for_the_repository(github):
    head = github.branches(FULL)["main"]
    writer = token_client(github, mint(github))
    run = writer.rest.checks.create(OWNER, REPO, name="Claude", head_sha=head).parsed_data
    no_checks = token_client(github, mint(github, permissions={"contents": "read"}))
    refused = failure(lambda: no_checks.rest.checks.create(OWNER, REPO, name="x", head_sha=head))
    assert refused.response.status_code == 403
    assert refused.response.headers["X-Accepted-GitHub-Permissions"] == "checks=write"
    assert (
        failure(lambda: no_checks.rest.checks.get(OWNER, REPO, run.id)).response.status_code == 403
    )
    reader = token_client(github, mint(github, permissions={"checks": "read"}))
    assert reader.rest.checks.get(OWNER, REPO, run.id).parsed_data.id == run.id
    denied = failure(lambda: reader.rest.checks.update(OWNER, REPO, run.id, status="in_progress"))
    assert denied.response.status_code == 403
    elsewhere = token_client(github, mint(github, repositories=[OTHER]))
    assert (
        failure(lambda: elsewhere.rest.checks.get(OWNER, REPO, run.id)).response.status_code == 404
    )
    assert failure(lambda: writer.rest.checks.get(OWNER, OTHER, run.id)).response.status_code == 404
    as_app = raw(github, github.app_jwt(), "GET", f"/repos/{FULL}/check-runs/{run.id}", {})
    assert as_app.status_code == 403
    assert [s.status for s in github.check_runs_of(FULL)[0].history] == ["queued"]


def test_a_click_on_a_check_run_is_githubs_own_webhook_payload(github):
    from tests.support import check_run_payload

    client = token_client(github, mint(github))
    stop = {"label": "Stop", "identifier": "stop", "description": "Stop the session"}
    head = github.branches(FULL)["main"]
    run = client.rest.checks.create(
        OWNER,
        REPO,
        data={"name": "Claude", "head_sha": head, "external_id": "s", "actions": [stop]},
    ).parsed_data
    clicked = check_run_payload(github, run.id, "requested_action", "alice", 5001, "stop")
    assert clicked["action"] == "requested_action"
    assert clicked["requested_action"] == {"identifier": "stop"}
    assert (clicked["check_run"]["id"], clicked["check_run"]["external_id"]) == (run.id, "s")
    assert clicked["sender"]["login"] == "alice" and clicked["installation"]["id"] == INSTALLATION
    assert clicked["repository"]["full_name"] == FULL
    with pytest.raises(AssertionError, match="not completed"):
        check_run_payload(github, run.id, "rerequested", "alice", 5001)
    client.rest.checks.update(OWNER, REPO, run.id, data={"conclusion": "failure", "actions": []})
    again = check_run_payload(github, run.id, "rerequested", "alice", 5001)
    assert again["action"] == "rerequested" and again["check_run"]["conclusion"] == "failure"
