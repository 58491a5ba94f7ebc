"""`.github/claude.yml`: real YAML through the real schema, and the file fetched from the GitHub
stand-in's contents API, from the default branch only."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from githubkit.exception import RequestFailed

from jobs.common.settings import WorkerSettings
from jobs.github.client import RepoSession
from jobs.session.repo_config import (
    CONFIG_PATH,
    MAX_BYTES,
    RepoConfig,
    RepoConfigError,
    bot_allowed,
    load_repo_config,
    mode_for_label,
    parse_repo_config,
    permission_at_least,
    ref_prefix_problem,
)
from tests.standins.github import GitHubStandIn
from tests.support import ROOT

FULL_FILE = """\
# Every setting, none at its default.
trigger: "@claude"
labels:
  claude: implement
  needs-review: review
rerun_on_push: false
min_permission: maintain
allowed_bots: [dependabot, "renovate[bot]"]
model: claude-sonnet-4-5
max_turns: 120
timeout_minutes: 90
max_budget_usd: 12.5
instructions: |
  Run `make check` before you finish.
  Never touch vendor/.
setup:
  - npm ci
  - pip install -e '.[dev]'
draft_pull_requests: true
branch_prefix: bots/claude/
allow_workflow_changes: true
network:
  registries: true
"""


def test_no_file_and_an_empty_file_give_the_defaults():
    defaults = RepoConfig()
    assert parse_repo_config(None) == defaults
    assert parse_repo_config("") == defaults
    assert parse_repo_config("# nothing configured yet\n") == defaults
    assert defaults.trigger == "/claude"
    assert defaults.labels == {"claude": "implement"}
    assert defaults.rerun_on_push is True
    assert defaults.min_permission == "write"
    assert defaults.allowed_bots == ()
    assert defaults.model is None
    assert (defaults.max_turns, defaults.timeout_minutes, defaults.max_budget_usd) == (40, 30, 5.0)
    assert defaults.instructions == "" and defaults.setup == ()
    assert defaults.draft_pull_requests is False
    assert defaults.branch_prefix == "claude/"
    assert defaults.allow_workflow_changes is False
    assert defaults.network.registries is False


def test_a_full_file():
    config = parse_repo_config(FULL_FILE)
    assert config.trigger == "@claude"
    assert config.labels == {"claude": "implement", "needs-review": "review"}
    assert config.rerun_on_push is False
    assert config.min_permission == "maintain"
    assert config.allowed_bots == ("dependabot[bot]", "renovate[bot]")
    assert config.model == "claude-sonnet-4-5"
    assert (config.max_turns, config.timeout_minutes, config.max_budget_usd) == (120, 90, 12.5)
    assert config.instructions == "Run `make check` before you finish.\nNever touch vendor/.\n"
    assert config.setup == ("npm ci", "pip install -e '.[dev]'")
    assert config.draft_pull_requests is True
    assert config.branch_prefix == "bots/claude/"
    assert config.allow_workflow_changes is True
    assert config.network.registries is True


def test_a_partial_file_keeps_the_other_defaults():
    config = parse_repo_config("max_turns: 10\nsetup:\n#  - make deps\nnetwork:\n")
    assert config == RepoConfig(max_turns=10)


def test_the_config_is_immutable():
    config = RepoConfig()
    with pytest.raises(ValueError, match="frozen"):
        config.max_turns = 200  # type: ignore[misc]


def test_limits_are_inclusive():
    config = parse_repo_config(
        "max_turns: 200\ntimeout_minutes: 180\nmax_budget_usd: 100\n"
        f"instructions: {'x' * 8000}\nsetup: [{', '.join(['make'] * 20)}]\n"
    )
    assert (config.max_turns, config.timeout_minutes, config.max_budget_usd) == (200, 180, 100.0)
    assert len(config.setup) == 20 and len(config.instructions) == 8000
    assert parse_repo_config("max_turns: 1\ntimeout_minutes: 1\nmax_budget_usd: 0.01\n")


@pytest.mark.parametrize(
    ("text", "path", "expected"),
    [
        # keys nobody knows, spelled close to ones we do
        ("max_turn: 10", "max_turn", "is not a known setting (did you mean `max_turns`?)"),
        ("max-turns: 10", "max-turns", "is not a known setting (did you mean `max_turns`?)"),
        ("lables: {bug: review}", "lables", "is not a known setting (did you mean `labels`?)"),
        (
            "network: {registry: true}",
            "network.registry",
            "is not a known setting (did you mean `registries`?)",
        ),
        ("colour: blue", "colour", "is not a known setting"),
        ("yes: 1", None, "has a key that is not a setting name: true (quote it: YAML reads"),
        # wrong types
        ("max_turns: forty", "max_turns", 'must be a whole number (got the text "forty")'),
        ("max_turns: '40'", "max_turns", 'must be a whole number (got the text "40")'),
        ("timeout_minutes: 12.5", "timeout_minutes", "must be a whole number (got 12.5)"),
        ("max_budget_usd: cheap", "max_budget_usd", 'must be a number (got the text "cheap")'),
        ("rerun_on_push: 'no'", "rerun_on_push", 'must be true or false (got the text "no")'),
        ("draft_pull_requests: 1", "draft_pull_requests", "must be true or false (got 1)"),
        ("setup: npm ci", "setup", 'must be a list (got the text "npm ci")'),
        ("setup: [npm ci, [make]]", "setup[1]", "must be text (got a list)"),
        ("allowed_bots: dependabot", "allowed_bots", "must be a list"),
        ("labels: [claude]", "labels", "must be a mapping of names to values (got a list)"),
        ("labels: {1: review}", "labels", "has a label name that must be text (got 1)"),
        ("network: true", "network", "must be a mapping of settings (got true)"),
        ("model: 2025-01-01", "model", "must be text (got the date 2025-01-01)"),
        ("instructions: [be nice]", "instructions", "must be text (got a list)"),
        # values outside their set
        (
            "labels: {bug: fix}",
            "labels.bug",
            'must be one of `implement`, `review`, `fix-ci` (got the text "fix")',
        ),
        (
            "min_permission: owner",
            "min_permission",
            'must be one of `read`, `triage`, `write`, `maintain`, `admin` (got the text "owner")',
        ),
        ("min_permission: none", "min_permission", "must be one of `read`"),
        # out of range
        ("max_turns: 500", "max_turns", "must be at most 200 (got 500)"),
        ("max_turns: 0", "max_turns", "must be at least 1 (got 0)"),
        ("timeout_minutes: 181", "timeout_minutes", "must be at most 180 (got 181)"),
        ("timeout_minutes: -5", "timeout_minutes", "must be at least 1 (got -5)"),
        ("max_budget_usd: 0", "max_budget_usd", "must be more than 0 (got 0)"),
        ("max_budget_usd: 100.01", "max_budget_usd", "must be at most 100 (got 100.01)"),
        ("max_budget_usd: .inf", "max_budget_usd", "must be a finite number (got inf)"),
        ("max_budget_usd: .nan", "max_budget_usd", "must be a finite number (got nan)"),
        (
            f"instructions: {'x' * 8001}",
            "instructions",
            "must be at most 8,000 characters (got 8,001)",
        ),
        (f"setup: [{', '.join(['make'] * 21)}]", "setup", "must have at most 20 entries (got 21)"),
        (f"setup: [{'x' * 1001}]", "setup[0]", "must be at most 1,000 characters (got 1,001)"),
        ("setup: [make, '  ']", "setup[1]", "must not be empty"),
        ('setup: ["make\\0"]', "setup[0]", "must not contain a NUL character"),
        ('instructions: "be nice\\0"', "instructions", "must not contain a NUL character"),
        (
            f"labels: {{{'l' * 51}: review}}",
            "labels",
            "has a label name that must be at most 50 characters (got 51)",
        ),
        ("labels: {'': review}", "labels", "has a label name that must not be empty"),
        (
            "labels: {Bug: review, bug: implement}",
            "labels",
            "names the label `bug` twice (label names ignore case)",
        ),
        # bad trigger
        ("trigger: claude", "trigger", "must start with `/` or `@`, like `/claude` or `@claude`"),
        ("trigger: /claude please", "trigger", "must be one word"),
        ("trigger: '/'", "trigger", "may hold only letters, digits, `-` and `_`"),
        ("trigger: /claude!", "trigger", "may hold only letters, digits, `-` and `_`"),
        (f"trigger: /{'c' * 40}", "trigger", "must be at most 40 characters (got 41)"),
        ("trigger: 7", "trigger", "must be text (got 7)"),
        # bad branch prefix
        ("branch_prefix: claude..x/", "branch_prefix", "must not contain `..`"),
        ("branch_prefix: claude", "branch_prefix", "must end with `/`, like `claude/`"),
        ("branch_prefix: /claude/", "branch_prefix", "must not start with `/`"),
        ("branch_prefix: claude//x/", "branch_prefix", "must not contain `//`"),
        ("branch_prefix: 'my bots/'", "branch_prefix", "must not contain spaces"),
        ("branch_prefix: 'a~b:c/'", "branch_prefix", "must not contain `~` or `:`"),
        ("branch_prefix: .hidden/", "branch_prefix", "must not have a part that starts with `.`"),
        (
            "branch_prefix: x/y.lock/",
            "branch_prefix",
            "must not have a part that ends with `.lock` (`y.lock`)",
        ),
        ("branch_prefix: 'x@{y/'", "branch_prefix", "must not contain `@{`"),
        # other checked strings
        (
            "allowed_bots: [dependabot, 'not a bot']",
            "allowed_bots[1]",
            "must be a bot's login, like `dependabot[bot]`",
        ),
        ("model: --dangerously-skip-permissions", "model", "must be a model name or alias"),
        ("model: claude sonnet", "model", "must be a model name or alias"),
    ],
)
def test_each_invalid_field_is_named(text, path, expected):
    with pytest.raises(RepoConfigError) as info:
        parse_repo_config(text + "\n")
    error = info.value
    assert error.path == path
    assert expected in error.problem
    where = f"`{path}` " if path else ""
    assert str(error).startswith(f"{CONFIG_PATH}: {where}{error.problem}")
    assert "pydantic" not in str(error) and "Input should" not in str(error)


def test_the_message_reads_as_one_line_per_problem():
    with pytest.raises(RepoConfigError) as info:
        parse_repo_config("max_turns: 500\n")
    assert str(info.value) == f"{CONFIG_PATH}: `max_turns` must be at most 200 (got 500)"

    with pytest.raises(RepoConfigError) as info:
        parse_repo_config("max_turns: 500\nmodle: opus\nlabels: {bug: fix}\n")
    assert str(info.value).splitlines() == [
        f"{CONFIG_PATH}: `labels.bug` must be one of `implement`, `review`, `fix-ci` "
        '(got the text "fix")',
        f"{CONFIG_PATH}: `max_turns` must be at most 200 (got 500)",
        f"{CONFIG_PATH}: `modle` is not a known setting (did you mean `model`?)",
    ]
    assert (info.value.path, len(info.value.problems)) == ("labels.bug", 3)


def test_a_wholly_wrong_file_is_summarised():
    with pytest.raises(RepoConfigError) as info:
        parse_repo_config("setup: [" + ", ".join(["1"] * 20) + "]\n")
    lines = str(info.value).splitlines()
    assert len(lines) == 10
    assert lines[-1] == f"{CONFIG_PATH}: has 11 more problems"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max_turns: 10\nlabels:\n  bug: review\n   x: 1\n", "line 4, column 5"),
        ("max_turns: 10\nsetup: [make\n", "line 3, column 1"),
        ("labels:\n\tbug: review\n", "line 2, column 1: found character '\\t'"),
        ("max_turns: 10\ntrigger: @claude\n", "line 2, column 10: found character '@'"),
        (
            "max_turns: 10\nmodel: opus\nmax_turns: 20\n",
            "line 3, column 1: `max_turns` is given twice (first on line 1)",
        ),
        ("max_turns: 10\n---\nmax_turns: 20\n", "line 2, column 1"),
        ("max_turns: 10\nmodel: \x07\n", "line 2: unacceptable character #x0007"),
    ],
)
def test_invalid_yaml_names_the_line(text, expected):
    with pytest.raises(RepoConfigError) as info:
        parse_repo_config(text)
    assert info.value.path is None
    assert str(info.value).startswith(f"{CONFIG_PATH}: is not valid YAML at ")
    assert expected in str(info.value)


def test_yaml_hints_for_the_usual_slips():
    with pytest.raises(RepoConfigError, match="quote a value that starts with @"):
        parse_repo_config("trigger: @claude\n")
    with pytest.raises(RepoConfigError, match="indent with spaces"):
        parse_repo_config("labels:\n\tbug: review\n")


@pytest.mark.parametrize("document", ["- max_turns: 10\n", "just some text\n", "42\n"])
def test_the_document_must_be_a_mapping(document):
    with pytest.raises(RepoConfigError, match="must be a mapping of settings") as info:
        parse_repo_config(document)
    assert info.value.path is None


def test_a_huge_file_is_refused_before_parsing():
    exactly = "# " + "x" * (MAX_BYTES - 3) + "\n"
    assert len(exactly.encode()) == MAX_BYTES
    assert parse_repo_config(exactly) == RepoConfig()
    with pytest.raises(RepoConfigError) as info:
        parse_repo_config(exactly + "#")
    assert str(info.value) == (
        f"{CONFIG_PATH}: is 65,537 bytes; the limit is 64 KiB (65,536 bytes)"
    )
    # Bytes, not characters: 30,000 three-byte characters are over the limit.
    with pytest.raises(RepoConfigError, match="is 90,008 bytes"):
        parse_repo_config("model: " + "€" * 30000 + "\n")


def test_deep_nesting_and_alias_bombs_fail_cleanly():
    with pytest.raises(RepoConfigError, match="nested too deeply"):
        parse_repo_config("setup: " + "[" * 2000 + "]" * 2000 + "\n")
    bomb = 'a: &a ["x","x","x","x","x","x","x","x","x"]\n' + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},"
        f"*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)}]\n"
        for i in range(9)
    )
    with pytest.raises(RepoConfigError, match="`a` is not a known setting"):
        parse_repo_config(bomb + "setup: *j\n")


def test_merge_keys_may_repeat_a_key():
    text = "network: &net {registries: true}\nlabels: {<<: {claude: review}, bug: implement}\n"
    assert parse_repo_config(text).labels == {"claude": "review", "bug": "implement"}


def test_mode_for_label_ignores_case():
    config = parse_repo_config("labels: {claude: implement, Needs-Review: review}\n")
    assert mode_for_label(config, "claude") == "implement"
    assert mode_for_label(config, "needs-review") == "review"
    assert mode_for_label(config, "CLAUDE") == "implement"
    assert mode_for_label(config, "bug") is None
    assert mode_for_label(parse_repo_config("labels: {}\n"), "claude") is None


def test_bot_allowed_takes_logins_with_or_without_the_suffix():
    config = parse_repo_config("allowed_bots: [Dependabot, 'renovate[bot]']\n")
    assert bot_allowed(config, "dependabot[bot]")
    assert bot_allowed(config, "Renovate[bot]")
    assert not bot_allowed(config, "dependabot")  # a user, not the App's bot
    assert not bot_allowed(RepoConfig(), "dependabot[bot]")


@pytest.mark.parametrize(
    ("have", "need", "expected"),
    [
        ("admin", "write", True),
        ("maintain", "write", True),
        ("write", "write", True),
        ("triage", "write", False),
        ("read", "read", True),
        ("none", "read", False),
        ("Admin", "admin", True),
        ("maintain", "admin", False),
        ("triage", "triage", True),
        ("custom-role", "read", False),
        ("", "read", False),
    ],
)
def test_permission_at_least(have, need, expected):
    assert permission_at_least(have, need) is expected


def test_permission_at_least_refuses_an_unknown_requirement():
    with pytest.raises(ValueError, match="unknown permission"):
        permission_at_least("admin", "owner")


@pytest.mark.parametrize(
    "prefix",
    [
        "claude/",
        "bots/claude/",
        "a.b/",
        "a./",
        "x@y/",
        "@/",
        "ä/",
        "a-b_c/",
        "v1.0/",
        "claude..x/",
        ".claude/",
        "a/.b/",
        "a.lock/",
        "a/b.lock/",
        "a b/",
        "a~/",
        "a^/",
        "a:/",
        "a?/",
        "a*/",
        "a[/",
        "a\\b/",
        "a@{b/",
        "a//b/",
        "/a/",
        "a\x01/",
        "a\x7f/",
    ],
)
def test_branch_prefix_rules_agree_with_git(prefix):
    ours = ref_prefix_problem(prefix) is None
    git = subprocess.run(
        ["git", "check-ref-format", f"refs/heads/{prefix}issue-1-fix-it"], capture_output=True
    )
    assert ours == (git.returncode == 0), (prefix, ref_prefix_problem(prefix))


# ------------------------------------------------------------------ from GitHub

INSTALLATION = 31
OWNER = "octo-org"
DEFAULT_BRANCH_FILE = "labels: {claude: implement, needs-review: review}\nmax_turns: 12\n"
PR_HEAD_FILE = "max_budget_usd: 100\nallow_workflow_changes: true\nmin_permission: read\n"
# git asks the helper for the token, which stays in the environment.
CREDENTIAL_HELPER = (
    '!f() { test "$1" = get || exit 0; '
    'echo username=x-access-token; echo "password=$GH_TOKEN"; }; f'
)


@pytest.fixture(scope="module")
def github():
    with GitHubStandIn() as gh:
        gh.add_installation(INSTALLATION, OWNER)
        # "trunk", not "main": the ref must be the repository's own default branch.
        gh.add_repo(
            f"{OWNER}/configured",
            INSTALLATION,
            default_branch="trunk",
            files={"README.md": "# configured\n", CONFIG_PATH: DEFAULT_BRANCH_FILE},
        )
        gh.add_repo(f"{OWNER}/plain", INSTALLATION, files={"README.md": "# plain\n"})
        gh.add_repo(
            f"{OWNER}/broken",
            INSTALLATION,
            files={"README.md": "# broken\n", CONFIG_PATH: "max_turns: 500\n"},
        )
        gh.add_repo(
            f"{OWNER}/odd",
            INSTALLATION,
            files={"README.md": "# odd\n", f"{CONFIG_PATH}/inner.yml": "x: 1\n"},
        )
        yield gh


def session_for(gh: GitHubStandIn, repo: str) -> RepoSession:
    settings = WorkerSettings.parse(
        GITHUB_APP_ID=str(gh.app_id),
        GITHUB_PRIVATE_KEY=gh.private_key_pem,
        GITHUB_API_URL=gh.api_url,
    )
    return RepoSession(settings, INSTALLATION, repo, {"contents": "read", "metadata": "read"})


def push_branch(gh: GitHubStandIn, repo: str, branch: str, files: dict[str, str], tmp: Path):
    """What a pull request's author does: commit on a branch of their own and push it."""
    token = gh.mint_token(INSTALLATION, [repo.split("/")[1]], {"contents": "write"})
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "GH_TOKEN": token,
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "credential.helper",
        "GIT_CONFIG_VALUE_0": CREDENTIAL_HELPER,
        "GIT_AUTHOR_NAME": "Author",
        "GIT_AUTHOR_EMAIL": "author@example.test",
        "GIT_COMMITTER_NAME": "Author",
        "GIT_COMMITTER_EMAIL": "author@example.test",
    }

    work = tmp / "work"

    def git(*args: str, cwd: Path = work) -> None:
        subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)

    git("clone", "--quiet", f"{gh.url}/{repo}.git", str(work), cwd=tmp)
    git("switch", "--quiet", "-c", branch)
    for path, text in files.items():
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_text(text)
    git("add", "--all")
    git("commit", "--quiet", "-m", "Raise my own limits")
    git("push", "--quiet", "origin", branch)


def test_loads_the_file_on_the_default_branch(github):
    session = session_for(github, f"{OWNER}/configured")
    config = load_repo_config(session, "trunk")
    assert config.labels == {"claude": "implement", "needs-review": "review"}
    assert config.max_turns == 12
    assert config == parse_repo_config(DEFAULT_BRANCH_FILE)


def contents_responses(gh: GitHubStandIn, repo: str) -> list:
    return [r for r in gh.responses if r.path.endswith(f"/repos/{repo}/contents/{CONFIG_PATH}")]


def test_no_file_means_the_defaults(github):
    assert load_repo_config(session_for(github, f"{OWNER}/plain"), "main") == RepoConfig()
    # GitHub's own "Not Found" for the file, not a 404 for an endpoint that does not exist.
    answer = contents_responses(github, f"{OWNER}/plain")[-1]
    assert (answer.template, answer.status) == ("/repos/{owner}/{repo}/contents/{path}", 404)


def test_a_pull_requests_head_cannot_change_the_config(github, tmp_path):
    repo = f"{OWNER}/configured"
    push_branch(github, repo, "raise-limits", {CONFIG_PATH: PR_HEAD_FILE}, tmp_path)
    assert github.read_file(repo, "raise-limits", CONFIG_PATH) == PR_HEAD_FILE
    session = session_for(github, repo)
    config = load_repo_config(session, "trunk")
    assert config == parse_repo_config(DEFAULT_BRANCH_FILE)
    assert config.max_budget_usd == 5.0 and config.allow_workflow_changes is False
    asked = [r for r in github.requests if r.path.endswith(f"/contents/{CONFIG_PATH}")][-1]
    assert "ref=trunk" in asked.query
    # The branch decides: asked for the head, GitHub would serve the author's version.
    assert load_repo_config(session, "raise-limits").max_budget_usd == 100


def test_a_pull_request_cannot_add_a_config_either(github, tmp_path):
    repo = f"{OWNER}/plain"
    push_branch(github, repo, "add-config", {CONFIG_PATH: PR_HEAD_FILE}, tmp_path)
    assert load_repo_config(session_for(github, repo), "main") == RepoConfig()
    answer = contents_responses(github, repo)[-1]
    assert (answer.template, answer.status) == ("/repos/{owner}/{repo}/contents/{path}", 404)


def test_an_invalid_file_on_the_default_branch_is_reported(github):
    with pytest.raises(RepoConfigError) as info:
        load_repo_config(session_for(github, f"{OWNER}/broken"), "main")
    assert str(info.value) == f"{CONFIG_PATH}: `max_turns` must be at most 200 (got 500)"


def test_a_directory_where_the_file_should_be_is_reported(github):
    with pytest.raises(RepoConfigError, match="is a directory, not a file"):
        load_repo_config(session_for(github, f"{OWNER}/odd"), "main")


def test_other_github_errors_propagate(github):
    # Running on defaults because GitHub failed could ignore a repository's lowered limits.
    session = session_for(github, f"{OWNER}/configured")
    github.fail_next("GET", r"/contents/\.github/claude\.yml$", 403)
    with pytest.raises(RequestFailed) as info:
        load_repo_config(session, "trunk")
    assert info.value.response.status_code == 403

    github.expire_token(session.token)
    with pytest.raises(RequestFailed) as info:
        load_repo_config(session, "trunk")
    assert info.value.response.status_code == 401


def test_the_documentation_covers_every_setting_and_its_example_parses():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_.]+)` \|", doc, re.MULTILINE))
    fields = {name for name in RepoConfig.model_fields if name != "network"}
    assert documented == fields | {"network.registries"}
    example = re.search(r"```yaml\n(.*?)```", doc, re.DOTALL).group(1)
    assert parse_repo_config(example) != RepoConfig()
