"""Validate recorded GitHub API responses against GitHub's official OpenAPI description.

The description comes from the npm package ``@octokit/openapi`` (pinned to 23.0.2 and
installed into ``.cache/npm`` by ``bash scripts/test-deps.sh``). It is GitHub's own
``github/rest-api-description`` output, republished with an ``x-octokit`` extension.

Which file: ``generated/ghes-3.19.json`` by default. The stand-in is shaped like GitHub
Enterprise Server (``/api/v3`` prefix) and 3.19 is the newest GHES release the package
carries. ``api.github.com`` is also available (``spec="api.github.com"``): the worker's
githubkit models are generated from the dotcom description, so the tests validate against
both. We read the non-dereferenced file (11 MB instead of 63 MB, and recursive schemas stay
finite) and resolve the ``#/components/schemas/...`` references ourselves, converting only
the schemas a response actually reaches.

OpenAPI 3.0 schemas are not JSON Schema. The translation done here:

* ``nullable: true`` → ``{"anyOf": [{"type": "null"}, <schema>]}`` (the only form that is
  right both for typed schemas and for ``allOf``/``$ref`` wrappers), with ``null`` also
  admitted by an ``enum``;
* ``$ref: "#/components/schemas/x"`` → ``$ref: "#/$defs/x"``;
* OpenAPI-only keywords (``example``, ``readOnly``, ``discriminator``, ``x-*`` …) are dropped;
* formats ``date-time``, ``date``, ``uri``, ``email`` are checked (with small local checkers,
  so no extra packages); ``uri-template`` and others are annotations only.

Validation uses Draft 2020-12 (type arrays, ``$defs``).

An undocumented error status (e.g. a 401 on an operation that lists only 404) is checked
against GitHub's ``basic-error`` schema; an undocumented success status is an error.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import threading
from datetime import date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
from jsonschema import Draft202012Validator, FormatChecker

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIR = REPO_ROOT / ".cache" / "npm" / "node_modules" / "@octokit" / "openapi"
PACKAGE_VERSION = "23.0.2"
DEFAULT_SPEC = "ghes-3.19"
SPECS = ("ghes-3.19", "api.github.com")

_SCHEMA_KEYWORDS_DROPPED = {
    "example",
    "examples",
    "readOnly",
    "writeOnly",
    "discriminator",
    "xml",
    "externalDocs",
    "deprecated",
    "nullable",
}


class OpenAPISpecMissing(RuntimeError):
    """The npm package holding the OpenAPI description is not installed."""


class OpenAPIValidationError(AssertionError):
    """A response body does not match the OpenAPI description."""


def spec_path(spec: str = DEFAULT_SPEC) -> Path:
    return PACKAGE_DIR / "generated" / f"{spec}.json"


def _check_installed(spec: str) -> Path:
    path = spec_path(spec)
    manifest = PACKAGE_DIR / "package.json"
    if not path.is_file() or not manifest.is_file():
        raise OpenAPISpecMissing(
            f"GitHub OpenAPI description not found at {path}. "
            "Run `bash scripts/test-deps.sh` (installs @octokit/openapi@"
            f"{PACKAGE_VERSION} into .cache/npm)."
        )
    version = json.loads(manifest.read_text()).get("version")
    if version != PACKAGE_VERSION:
        raise OpenAPISpecMissing(
            f"@octokit/openapi {version} is installed, {PACKAGE_VERSION} is expected. "
            "Run `bash scripts/test-deps.sh`."
        )
    return path


_load_lock = threading.Lock()


@functools.cache
def load_spec(spec: str = DEFAULT_SPEC) -> dict[str, Any]:
    """Load (once) and return the raw OpenAPI document."""
    path = _check_installed(spec)
    with _load_lock:
        return json.loads(path.read_bytes())


# --------------------------------------------------------------------------- translation


class _Translator:
    """Converts OpenAPI 3.0 schema objects into JSON Schema 2020-12, lazily per component."""

    def __init__(self, document: dict[str, Any]):
        self.components = document["components"]["schemas"]
        self.defs: dict[str, Any] = {}
        self._pending: list[str] = []

    def schema(self, node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            return {"$ref": self._ref(node["$ref"])}
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in _SCHEMA_KEYWORDS_DROPPED or key.startswith("x-"):
                continue
            if key == "properties":
                out[key] = {name: self.schema(sub) for name, sub in value.items()}
            elif key in ("items", "not") or (
                key == "additionalProperties" and isinstance(value, dict)
            ):
                out[key] = self.schema(value)
            elif key in ("allOf", "anyOf", "oneOf"):
                out[key] = [self.schema(sub) for sub in value]
            else:
                out[key] = value
        if node.get("nullable") is True:
            if "enum" in out and None not in out["enum"]:
                out["enum"] = [*out["enum"], None]
            return {"anyOf": [{"type": "null"}, out]}
        return out

    def _ref(self, ref: str) -> str:
        prefix = "#/components/schemas/"
        if not ref.startswith(prefix):
            raise ValueError(f"unsupported $ref {ref!r}")
        name = ref[len(prefix) :]
        if name not in self.defs:
            self.defs[name] = None  # placeholder: breaks recursion
            self._pending.append(name)
        return f"#/$defs/{_escape_pointer(name)}"

    def root(self, node: Any) -> dict[str, Any]:
        top = self.schema(node)
        while self._pending:
            name = self._pending.pop()
            self.defs[name] = self.schema(self.components[name])
        root = dict(top) if isinstance(top, dict) else {"const": top}
        if "$ref" in root:
            root = {"allOf": [root]}
        root["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        root["$defs"] = self.defs
        return root


def _escape_pointer(name: str) -> str:
    return name.replace("~", "~0").replace("/", "~1")


# --------------------------------------------------------------------------- formats

_format_checker = FormatChecker(formats=())


@_format_checker.checks("date-time", raises=ValueError)
def _is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", value):
        raise ValueError(f"{value!r} is not an RFC 3339 date-time")
    datetime.fromisoformat(value.replace("Z", "+00:00"))
    return True


@_format_checker.checks("date", raises=ValueError)
def _is_date(value: object) -> bool:
    if isinstance(value, str):
        date.fromisoformat(value)
    return True


@_format_checker.checks("uri", raises=ValueError)
def _is_uri(value: object) -> bool:
    if not isinstance(value, str):
        return True
    parts = urlsplit(value)
    if not parts.scheme or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", parts.scheme):
        raise ValueError(f"{value!r} is not an absolute URI")
    if any(ch.isspace() for ch in value):
        raise ValueError(f"{value!r} contains whitespace")
    return True


@_format_checker.checks("email")
def _is_email(value: object) -> bool:
    return not isinstance(value, str) or "@" in value


# --------------------------------------------------------------------------- lookup


def _operation(document: dict[str, Any], method: str, template: str) -> dict[str, Any]:
    path_item = document["paths"].get(template)
    if path_item is None:
        raise OpenAPIValidationError(f"{template!r} is not a path of the OpenAPI description")
    operation = path_item.get(method.lower())
    if operation is None:
        raise OpenAPIValidationError(f"{method.upper()} {template} is not documented")
    return operation


def _response_schema(
    document: dict[str, Any], method: str, template: str | None, status: int
) -> tuple[str, dict[str, Any] | None]:
    """Return (label, OpenAPI schema or None when the response has no body)."""
    components = document["components"]
    basic_error = {"$ref": "#/components/schemas/basic-error"}
    if template is None:
        if status >= 400:
            return "basic-error (unrouted)", basic_error
        raise OpenAPIValidationError(f"{method} <unrouted> answered {status}")
    operation = _operation(document, method, template)
    responses = operation.get("responses", {})
    response = responses.get(str(status)) or responses.get(f"{str(status)[0]}XX")
    if response is None:
        if status >= 400:
            return f"basic-error (status {status} undocumented)", basic_error
        raise OpenAPIValidationError(
            f"{method.upper()} {template} answered {status}, which the description does not "
            f"document (documented: {', '.join(responses)})"
        )
    if "$ref" in response:
        response = components["responses"][response["$ref"].rsplit("/", 1)[-1]]
    content = response.get("content")
    if not content:
        return f"{status} (no content)", None
    media = content.get("application/json") or next(iter(content.values()))
    return f"{status} {operation.get('operationId', '')}".strip(), media.get("schema")


_validator_lock = threading.Lock()


@functools.cache
def _validator(spec: str, method: str, template: str | None, status: int):
    document = load_spec(spec)
    label, schema = _response_schema(document, method, template, status)
    if schema is None:
        return label, None
    if (method, template) == ("GET", "/app/installations"):
        schema = _installations_erratum(schema)
    root = _Translator(document).root(schema)
    # Draft202012Validator.check_schema(root) would cost ~0.3 s per schema; the tests run it
    # on a few translated schemas instead.
    return label, Draft202012Validator(root, format_checker=_format_checker)


def _installations_erratum(schema: dict[str, Any]) -> dict[str, Any]:
    """GitHub's description inlines this operation's installation and writes its account as
    `allOf` [simple-user, enterprise], which no account satisfies; the `installation` schema
    every other operation uses has `anyOf`, a user or an enterprise, as GitHub answers."""
    fixed = copy.deepcopy(schema)
    account = fixed["items"]["properties"]["account"]
    if "allOf" in account:
        account["anyOf"] = account.pop("allOf")
    return fixed


def response_schema(
    method: str, path_template: str | None, status: int, *, spec: str = DEFAULT_SPEC
) -> dict[str, Any] | None:
    """The translated JSON Schema for a response (None when the response has no body)."""
    _, validator = _validator(spec, method.upper(), path_template, int(status))
    return None if validator is None else validator.schema


def _json_path(path) -> str:
    out = "$"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _describe(error: jsonschema.ValidationError) -> str:
    best = jsonschema.exceptions.best_match([error]) if error.context else error
    text = f"at {_json_path(best.absolute_path)}: {best.message}"
    if best is not error:
        text += f" (within {error.validator} at {_json_path(error.absolute_path)})"
    return text


def validate_response(
    method: str,
    path_template: str | None,
    status: int,
    body: Any,
    *,
    spec: str = DEFAULT_SPEC,
) -> None:
    """Raise OpenAPIValidationError unless ``body`` matches the documented response.

    ``path_template`` is the OpenAPI path such as
    ``/repos/{owner}/{repo}/issues/{issue_number}/comments`` (None for an unrouted request,
    whose body must then be a GitHub ``basic-error``).
    """
    method = method.upper()
    with _validator_lock:
        label, validator = _validator(spec, method, path_template, int(status))
    where = f"{method} {path_template or '<unrouted>'} → {label} [{spec}]"
    if validator is None:
        if body not in (None, b"", ""):
            raise OpenAPIValidationError(f"{where}: expected no body, got {body!r:.200}")
        return
    errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [_describe(e) for e in errors[:10]]
        more = f"\n  … and {len(errors) - 10} more" if len(errors) > 10 else ""
        raise OpenAPIValidationError(
            f"{where}: {len(errors)} schema violation(s)\n  " + "\n  ".join(lines) + more
        )
