"""A repository's own settings: `.github/claude.yml`, read from its default branch.

Only the default branch counts: a pull request's head is written by its author, who must not be
able to raise their own budget, permissions or network access by editing the file in their PR.
Every field has a default, so a repository needs no file at all.

pydantic checks the values (`extra="forbid"`, so a misspelt key is reported rather than quietly
ignored); `RepoConfigError` turns what it finds into one line per problem that a maintainer can
act on, naming the setting in the file's own terms instead of pydantic's.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import json
import re
from datetime import date
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple

import yaml
from githubkit.exception import RequestFailed
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from jobs.common.request import CONFIG_PATH, Mode

if TYPE_CHECKING:
    from jobs.github.client import RepoSession

MAX_BYTES = 64 * 1024
MAX_REPORTED = 10  # problems listed in one error; a wholly wrong file need not flood a comment

# GitHub's repository roles, weakest first (what the collaborator API calls `role_name`).
ROLES = ("none", "read", "triage", "write", "maintain", "admin")

# The modes a label may start (Mode's values).
LabelMode = Literal["implement", "review", "fix-ci"]
Permission = Literal["read", "triage", "write", "maintain", "admin"]


def _problem(message: str) -> PydanticCustomError:
    # Our own error type carries the finished wording; `_describe` passes it through unchanged.
    return PydanticCustomError("repo_config", message)


# ------------------------------------------------------------------ field checks


def _trigger(value: str) -> str:
    if not value.startswith(("/", "@")):
        raise _problem("must start with `/` or `@`, like `/claude` or `@claude`")
    if re.search(r"\s", value):
        raise _problem("must be one word, like `/claude`")
    if not re.fullmatch(r"[/@][A-Za-z0-9][A-Za-z0-9_-]*", value):
        raise _problem("may hold only letters, digits, `-` and `_` after its `/` or `@`")
    return value


def _bot_login(value: str) -> str:
    # A GitHub login (what an App's bot is called before its `[bot]` suffix), suffix optional.
    if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})(?:\[bot\])?", value):
        raise _problem("must be a bot's login, like `dependabot[bot]`")
    return value if value.endswith("[bot]") else f"{value}[bot]"


def _model_name(value: str) -> str:
    # Passed to the CLI as `--model VALUE`: a leading `-` would be read as another option.
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:@/\[\]-]*", value):
        raise _problem("must be a model name or alias, like `claude-sonnet-4-5` or `opus`")
    return value


def _no_nul(value: str) -> str:
    # YAML's "\0" escape can write one; no command line or prompt can carry it.
    if "\0" in value:
        raise _problem("must not contain a NUL character (`\\0`)")
    return value


def _shell_command(value: str) -> str:
    if not value.strip():
        raise _problem("must not be empty")
    return _no_nul(value)


def ref_prefix_problem(prefix: str) -> str | None:
    """Why `refs/heads/<prefix><name>` would fail `git check-ref-format`, or None when it passes.

    The name that follows is a slug of `[a-z0-9-]`, so only the prefix's own parts can break a
    rule; the trailing `/` keeps `..` and `@{` from forming across the join.
    """
    if not prefix.endswith("/"):
        return "must end with `/`, like `claude/`"
    if prefix.startswith("/"):
        return "must not start with `/`"
    if "//" in prefix:
        return "must not contain `//`"
    if ".." in prefix:
        return "must not contain `..`"
    if "@{" in prefix:
        return "must not contain `@{`"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in prefix):
        return "must not contain control characters"
    if " " in prefix:
        return "must not contain spaces"
    bad = [c for c in "~^:?*[\\" if c in prefix]
    if bad:
        return "must not contain " + " or ".join(f"`{c}`" for c in bad)
    for part in prefix[:-1].split("/"):
        if part.startswith("."):
            return f"must not have a part that starts with `.` (`{part}`)"
        if part.endswith(".lock"):
            return f"must not have a part that ends with `.lock` (`{part}`)"
    return None


def _branch_prefix(value: str) -> str:
    problem = ref_prefix_problem(value)
    if problem:
        raise _problem(problem)
    return value


LabelName = Annotated[str, Field(min_length=1, max_length=50)]  # GitHub's limit on label names
BotLogin = Annotated[str, AfterValidator(_bot_login)]
SetupCommand = Annotated[str, Field(max_length=1000), AfterValidator(_shell_command)]


# ------------------------------------------------------------------ the schema


class Network(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    # Setup commands reach package registries through an allowlisting proxy; nothing else.
    registries: bool = False


class RepoConfig(BaseModel):
    """The settings of one repository; `RepoConfig()` is what a repository without a file gets."""

    # strict: YAML already yields real numbers and booleans, so a quoted "40" or "yes please"
    # is a mistake worth reporting, not something to coerce.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    trigger: Annotated[str, Field(max_length=40), AfterValidator(_trigger)] = "/claude"
    labels: dict[LabelName, LabelMode] = Field(
        default_factory=lambda: {"claude": Mode.IMPLEMENT.value}
    )
    rerun_on_push: bool = True
    min_permission: Permission = "write"
    # Tuples keep a shared config immutable; lists in the file are accepted (hence strict off).
    allowed_bots: tuple[BotLogin, ...] = Field((), max_length=50, strict=False)
    model: Annotated[str, Field(max_length=100), AfterValidator(_model_name)] | None = None
    max_turns: int = Field(40, ge=1, le=200)
    timeout_minutes: int = Field(30, ge=1, le=180)
    max_budget_usd: float = Field(5.0, gt=0, le=100, allow_inf_nan=False)
    instructions: Annotated[str, Field(max_length=8000), AfterValidator(_no_nul)] = ""
    setup: tuple[SetupCommand, ...] = Field((), max_length=20, strict=False)
    draft_pull_requests: bool = False
    branch_prefix: Annotated[str, Field(max_length=100), AfterValidator(_branch_prefix)] = "claude/"
    allow_workflow_changes: bool = False
    network: Network = Field(default_factory=Network)
    # What a request on a fork's pull request gives back: suggestions on its diff and a patch
    # (no fork commit reaches this repository), or a follow-up pull request built on its head,
    # whose workflows then run here with this repository's secrets: only by consent.
    fork_pull_requests: Literal["suggest", "follow_up"] = "suggest"

    @field_validator("labels")
    @classmethod
    def _labels_differ_in_more_than_case(cls, labels: dict[str, str]) -> dict[str, str]:
        # GitHub label names ignore case, so two entries could never both be meant.
        seen: set[str] = set()
        for name in labels:
            if name.casefold() in seen:
                raise _problem(f"names the label `{name}` twice (label names ignore case)")
            seen.add(name.casefold())
        return labels


def mode_for_label(config: RepoConfig, label: str) -> Mode | None:
    """The mode a label starts (`implement`, `review`, `fix-ci`), or None when it starts nothing."""
    for name, mode in config.labels.items():
        if name.casefold() == label.casefold():
            return Mode(mode)
    return None


def bot_allowed(config: RepoConfig, login: str) -> bool:
    """Whether the bot `login` (e.g. `renovate[bot]`) may trigger; logins ignore case."""
    return login.casefold() in {bot.casefold() for bot in config.allowed_bots}


def permission_at_least(have: str, need: str) -> bool:
    """Whether role `have` is at least `need`, in GitHub's order none < read < … < admin.

    Give it the collaborator API's `role_name`: its legacy `permission` folds maintain into write
    and triage into read. An unknown role (a custom one, or None) counts as none: fail closed.
    """
    if need not in ROLES:
        raise ValueError(f"unknown permission {need!r}")
    have = (have or "none").lower()
    return have in ROLES and ROLES.index(have) >= ROLES.index(need)


# ------------------------------------------------------------------ errors


class Problem(NamedTuple):
    path: str | None  # `labels.bug`, `setup[2]`, `max_turns`; None for the file as a whole
    problem: str

    def __str__(self) -> str:
        where = f"`{self.path}` " if self.path else ""
        return f"{CONFIG_PATH}: {where}{self.problem}"


class RepoConfigError(Exception):
    """`.github/claude.yml` cannot be used; `str()` is one line per problem, for a maintainer.

    `.path` and `.problem` describe the first problem; `.problems` holds them all.
    """

    def __init__(self, path: str | None, problem: str, *more: Problem) -> None:
        self.problems = (Problem(path, problem), *more)
        self.path = path
        self.problem = problem
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


def _shown(value: Any) -> str:
    """A short, safe rendering of what the file held (never a huge or aliased structure)."""
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        text = json.dumps(value if len(value) <= 60 else value[:57] + "…", ensure_ascii=False)
        return f"the text {text}"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, date):
        return f"the date {value.isoformat()}"
    return f"a {type(value).__name__}"


def _number(limit: float) -> str:
    return str(int(limit)) if isinstance(limit, float) and limit.is_integer() else str(limit)


_LIST_FIELDS = ("allowed_bots", "setup")


def _path(loc: tuple[Any, ...]) -> str:
    # `setup[2]` for a list entry (counted from 0); an int elsewhere is a key the file wrote.
    path = ""
    for part in loc:
        if isinstance(part, int) and not isinstance(part, bool) and path in _LIST_FIELDS:
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = RepoConfig
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not (
            isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        ):
            return []
        model = field.annotation
    return list(model.model_fields)


def _did_you_mean(key: Any, known: list[str]) -> str:
    squash = {re.sub(r"[-_ ]", "", k.lower()): k for k in known}
    exact = squash.get(re.sub(r"[-_ ]", "", str(key).lower()))
    close = [exact] if exact else difflib.get_close_matches(str(key), known, n=1, cutoff=0.7)
    return f" (did you mean `{close[0]}`?)" if close else ""


def _choices(expected: str) -> str:
    # pydantic's ctx reads "'read', 'triage' or 'write'"; the names are what we need.
    names = [f"`{name}`" for name in re.findall(r"'([^']*)'", expected)]
    return " or ".join(names) if len(names) == 2 else "one of " + ", ".join(names)


_TYPE_WORDS = {
    "string_type": "must be text",
    "bool_type": "must be true or false",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "int_parsing": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "dict_type": "must be a mapping of names to values",
    "model_type": "must be a mapping of settings",
    "model_attributes_type": "must be a mapping of settings",
    "finite_number": "must be a finite number",
}


# Bounds pydantic names by the key of its ctx that holds the bound.
_BOUND_WORDS = {
    "greater_than_equal": ("at least", "ge"),
    "less_than_equal": ("at most", "le"),
    "greater_than": ("more than", "gt"),
    "less_than": ("less than", "lt"),
}
_LENGTH_WORDS = {"too_long": ("at most", "max_length"), "too_short": ("at least", "min_length")}


def _describe(error: dict[str, Any]) -> Problem:
    """One pydantic error in a maintainer's words."""
    kind, loc = error["type"], tuple(error["loc"])
    value = error.get("input")
    is_key = bool(loc) and loc[-1] == "[key]"
    if is_key:
        loc = loc[:-2]  # (…, "labels", <key>, "[key]"): the problem is the key itself

    if kind == "invalid_key":
        # YAML 1.1 reads an unquoted yes/no/on/off as a boolean, even as a key.
        hint = " (quote it: YAML reads yes, no, on and off as true or false)"
        text = f"has a key that is not a setting name: {_shown(value)}"
        return Problem(_path(loc[:-1]) or None, text + (hint if isinstance(value, bool) else ""))
    text = _what_is_wrong(error, loc)
    if is_key:
        noun = "a label name" if loc == ("labels",) else "a key"
        text = f"has {noun} that {text}"
    return Problem(_path(loc) or None, text)


def _what_is_wrong(error: dict[str, Any], loc: tuple[Any, ...]) -> str:
    """The error's words after the setting's name: "must be at least 1 (got 0)"."""
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    got = f" (got {_shown(value)})" if value != "" else ""
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a known setting" + _did_you_mean(loc[-1], _known_keys(loc[:-1]))
    if kind in _TYPE_WORDS:
        return _TYPE_WORDS[kind] + got
    if kind in ("literal_error", "enum"):
        return f"must be {_choices(ctx.get('expected', ''))}{got}"
    if kind in _BOUND_WORDS:
        words, key = _BOUND_WORDS[kind]
        return f"must be {words} {_number(ctx[key])}{got}"
    if kind == "string_too_short":  # only ever min_length=1
        return "must not be empty"
    if kind == "string_too_long":
        return f"must be at most {ctx['max_length']:,} characters (got {len(value):,})"
    if kind in _LENGTH_WORDS:
        words, key = _LENGTH_WORDS[kind]
        return f"must have {words} {ctx[key]} entries (got {ctx['actual_length']})"
    if kind == "repo_config":
        # Our checks on a whole list or mapping name the culprit themselves.
        return error["msg"] + ("" if isinstance(value, list | tuple | dict) else got)
    if kind == "value_error":
        return f"{ctx.get('error', error['msg'])}{got}"
    return f"is not valid: {error['msg'][:1].lower()}{error['msg'][1:]}{got}"


# ------------------------------------------------------------------ reading the file


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice is an error, not "the last one wins"."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"`{key}` is given twice (first on line {seen[key]})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def _yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    mark = getattr(exc, "problem_mark", None)
    detail = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if mark is not None:
        where = f" at line {mark.line + 1}, column {mark.column + 1}"
    elif isinstance(exc, yaml.reader.ReaderError):
        where = f" at line {text.count(chr(10), 0, exc.position) + 1}"
    else:
        where = ""
    hint = ""
    if "cannot start any token" in detail:
        if "'\\t'" in detail:  # PyYAML shows the character as its repr
            hint = " (indent with spaces; YAML does not allow tabs)"
        elif "'@'" in detail or "'`'" in detail:
            hint = ' (quote a value that starts with @ or `, like trigger: "@claude")'
    return f"is not valid YAML{where}: {detail}{hint}"


def parse_repo_config(text: str | None) -> RepoConfig:
    """The settings in the file's text; None (no file) and an empty file give the defaults."""
    if text is None:
        return RepoConfig()
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_BYTES:
        raise RepoConfigError(None, f"is {size:,} bytes; the limit is 64 KiB ({MAX_BYTES:,} bytes)")
    try:
        document = yaml.load(text, Loader=_Loader)  # a SafeLoader: plain data, no objects
    except yaml.YAMLError as exc:
        raise RepoConfigError(None, _yaml_problem(exc, text)) from None
    except RecursionError:
        raise RepoConfigError(None, "is nested too deeply to read") from None
    if document is None:
        return RepoConfig()
    if not isinstance(document, dict):
        raise RepoConfigError(None, f"must be a mapping of settings (got {_shown(document)})")
    # An empty value (`setup:` with its items commented out) means "the default".
    document = {key: value for key, value in document.items() if value is not None}
    if isinstance(document.get("network"), dict):
        document["network"] = {k: v for k, v in document["network"].items() if v is not None}
    try:
        return RepoConfig.model_validate(document)
    except ValidationError as exc:
        problems = [_describe(error) for error in exc.errors()]
        if len(problems) > MAX_REPORTED:
            extra = len(problems) - MAX_REPORTED + 1
            problems[MAX_REPORTED - 1 :] = [Problem(None, f"has {extra} more problems")]
        raise RepoConfigError(*problems[0], *problems[1:]) from None


def load_repo_config(session: RepoSession, default_branch: str) -> RepoConfig:
    """The repository's settings as its default branch has them; no file means the defaults.

    Any GitHub failure other than 404 propagates: running with defaults because GitHub hiccuped
    could ignore a repository's lowered limits.
    """
    try:
        response = session.gh.rest.repos.get_content(
            session.owner, session.name, CONFIG_PATH, ref=default_branch
        )
    except RequestFailed as exc:
        if exc.response.status_code == 404:
            return RepoConfig()
        raise
    return parse_repo_config(_file_text(response.json()))


def _file_text(body: Any) -> str:
    if isinstance(body, list):
        raise RepoConfigError(None, "is a directory, not a file")
    kind = body.get("type")
    if kind != "file":
        raise RepoConfigError(None, f"is a {kind}, not a file")
    size = body.get("size") or 0
    if size > MAX_BYTES:
        # Checked before decoding: over 1 MB GitHub sends no content at all.
        raise RepoConfigError(None, f"is {size:,} bytes; the limit is 64 KiB ({MAX_BYTES:,} bytes)")
    try:
        data = base64.b64decode(body.get("content") or "")
    except binascii.Error:
        raise RepoConfigError(None, "could not be read: GitHub sent undecodable content") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RepoConfigError(None, f"is not UTF-8 text (byte {exc.start})") from None
