"""Which lines of a pull request's diff can carry a review comment.

GitHub anchors a review comment to a line *in the diff*: on the RIGHT side, a new-file line that
is added or shown as context in a hunk; on the LEFT side, an old-file line that is removed or
shown as context. Any other line is refused (422 "Line could not be resolved"), so the review
builder checks every comment against an index of the PR's unified diff first.

The input is the text GitHub returns for a pull request with `Accept: application/vnd.github.diff`
(git's own format): `diff --git` headers, extended headers (`new file mode`, `deleted file mode`,
`similarity index`, `rename from/to`, `copy from/to`, `index`, mode changes), `---`/`+++` lines
(git appends a TAB to names containing spaces and C-quotes names with unusual bytes), `Binary
files ... differ`, and hunks with `\\ No newline at end of file` markers.

Lines are split on "\\n" only: `str.splitlines` would also split on form feeds and Unicode line
separators that are legitimately part of a diff line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

__all__ = [
    "DiffIndex",
    "FileDiff",
    "Hunk",
    "annotate_diff",
    "commentable",
    "commentable_range",
    "parse_diff",
    "parse_pull_files",
]

SIDES = ("RIGHT", "LEFT")
_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_ESCAPES = {"a": 7, "b": 8, "t": 9, "n": 10, "v": 11, "f": 12, "r": 13, '"': 34, "\\": 92}


@dataclass
class Hunk:
    old_start: int
    old_count: int
    new_start: int
    new_count: int
    right: set[int] = field(default_factory=set)  # new-file lines shown (added + context)
    left: set[int] = field(default_factory=set)  # old-file lines shown (removed + context)

    def lines(self, side: str) -> set[int]:
        return self.left if side == "LEFT" else self.right


@dataclass
class FileDiff:
    path: str  # the path comments use: the new path, or the old one for a deleted file
    old_path: str | None  # None for an added file
    new_path: str | None  # None for a deleted file
    status: str = "modified"  # added | deleted | modified | renamed | copied
    binary: bool = False
    hunks: list[Hunk] = field(default_factory=list)

    @property
    def right(self) -> set[int]:
        """New-file line numbers a RIGHT-side comment may use."""
        return set().union(*(h.right for h in self.hunks))

    @property
    def left(self) -> set[int]:
        """Old-file line numbers a LEFT-side comment may use."""
        return set().union(*(h.left for h in self.hunks))

    def lines(self, side: str = "RIGHT") -> set[int]:
        return self.left if side == "LEFT" else self.right

    def hunk_of(self, line: int, side: str = "RIGHT") -> Hunk | None:
        for hunk in self.hunks:
            if line in hunk.lines(side):
                return hunk
        return None


@dataclass
class DiffIndex:
    files: dict[str, FileDiff] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)  # old path of a rename -> its path

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and self.resolve(path) is not None

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[str]:
        return iter(self.files)

    def resolve(self, path: str) -> str | None:
        """The diff's own spelling of `path` (new path of a rename), tolerating `./`, `a/`, `b/`
        and `/workspace/` prefixes; None when the file is not in the diff."""
        for candidate in _candidates(path):
            if candidate in self.files:
                return candidate
            if candidate in self.aliases:
                return self.aliases[candidate]
        return None

    def get(self, path: str) -> FileDiff | None:
        resolved = self.resolve(path)
        return self.files[resolved] if resolved is not None else None


def _candidates(path: str) -> Iterator[str]:
    path = path.strip()
    yield path
    stripped = path
    for prefix in ("/workspace/", "./"):
        stripped = stripped.removeprefix(prefix)
    yield stripped
    yield stripped.lstrip("/")
    if stripped[:2] in ("a/", "b/"):
        yield stripped[2:]


def commentable(diff_index: DiffIndex, path: str, line: int, side: str = "RIGHT") -> bool:
    """Whether GitHub accepts a review comment on `line` of `path` on `side`."""
    f = diff_index.get(path)
    return f is not None and isinstance(line, int) and line in f.lines(side.upper())


def commentable_range(
    diff_index: DiffIndex, path: str, start_line: int, line: int, side: str = "RIGHT"
) -> bool:
    """Whether a multi-line comment over `start_line`..`line` fits in one hunk of the diff."""
    f = diff_index.get(path)
    if f is None or not (isinstance(start_line, int) and isinstance(line, int)):
        return False
    if start_line >= line:
        return False
    hunk = f.hunk_of(line, side.upper())
    return hunk is not None and start_line in hunk.lines(side.upper())


# --------------------------------------------------------------------------- parsing


def _unquote(name: str) -> str:
    """git's C-style quoting ("a/t\\303\\251st.txt") back to text."""
    if not (len(name) >= 2 and name[0] == '"' and name[-1] == '"'):
        return name
    out = bytearray()
    s, i = name[1:-1], 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            nxt = s[i + 1]
            if nxt in "01234567" and re.fullmatch(r"[0-7]{3}", s[i + 1 : i + 4]):
                out.append(int(s[i + 1 : i + 4], 8))
                i += 4
                continue
            if nxt in _ESCAPES:
                out.append(_ESCAPES[nxt])
                i += 2
                continue
        out.extend(c.encode("utf-8"))
        i += 1
    return out.decode("utf-8", "replace")


def _file_name(raw: str, prefix: str) -> str | None:
    """A `---`/`+++` operand: None for /dev/null, else the path without its a/ or b/ prefix."""
    raw = raw.rstrip("\r")
    if raw.startswith('"'):
        end = _closing_quote(raw)
        name = _unquote(raw[: end + 1]) if end > 0 else raw
    else:
        name = raw.split("\t", 1)[0]  # git adds a TAB after names with spaces
    if name == "/dev/null":
        return None
    return name[len(prefix) :] if name.startswith(prefix) else name


def _closing_quote(s: str) -> int:
    i = 1
    while i < len(s):
        if s[i] == "\\":
            i += 2
            continue
        if s[i] == '"':
            return i
        i += 1
    return -1


def _header_paths(rest: str) -> tuple[str | None, str | None]:
    """Old and new path from the operands of `diff --git a/X b/Y` (best effort)."""
    rest = rest.rstrip("\r")
    if rest.startswith('"'):
        end = _closing_quote(rest)
        if end > 0:
            a = _unquote(rest[: end + 1])
            b = rest[end + 1 :].strip()
            b = _unquote(b) if b.startswith('"') else b
            return a.removeprefix("a/"), b.removeprefix("b/")
    if rest.endswith('"'):
        start = rest.rfind(' "')
        if start > 0:
            return rest[:start].removeprefix("a/"), _unquote(rest[start + 1 :]).removeprefix("b/")
    # Unquoted: same path twice ("a/P b/P") unless renamed (the rename lines say so then).
    if len(rest) % 2 == 1:
        half = (len(rest) - 1) // 2
        a, b = rest[:half], rest[half + 1 :]
        if a.startswith("a/") and b.startswith("b/") and a[2:] == b[2:]:
            return a[2:], b[2:]
    parts = rest.split(" b/", 1)
    if len(parts) == 2 and parts[0].startswith("a/"):
        return parts[0][2:], parts[1]
    return None, None


class _Builder:
    def __init__(self) -> None:
        self.index = DiffIndex()
        self.current: dict | None = None

    def start(self, header_rest: str) -> None:
        self.finish()
        old, new = _header_paths(header_rest)
        self.current = {
            "old": old,
            "new": new,
            "status": "modified",
            "binary": False,
            "hunks": [],
            "minus": False,  # a `---` line gave the old name
            "plus": False,
        }

    def finish(self) -> None:
        cur, self.current = self.current, None
        if cur is None:
            return
        old, new = cur["old"], cur["new"]
        status = cur["status"]
        if status == "modified" and old and new and old != new:
            status = "renamed"
        if status == "added":
            old = None
        if status == "deleted":
            new = None
        path = new or old
        if not path:
            return
        f = FileDiff(
            path=path,
            old_path=old,
            new_path=new,
            status=status,
            binary=cur["binary"],
            hunks=cur["hunks"],
        )
        self.index.files[path] = f
        if old and new and old != new:
            self.index.aliases.setdefault(old, path)


def _split(text: str) -> list[str]:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it is no empty context line
    return lines


def parse_diff(text: str) -> DiffIndex:
    """Index a unified diff (git / GitHub `application/vnd.github.diff` format) by file path."""
    b = _Builder()
    lines = _split(text)
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("diff --git "):
            b.start(line[len("diff --git ") :])
            i += 1
            continue
        cur = b.current
        if cur is None:
            i += 1
            continue
        m = _HUNK.match(line)
        if m:
            i = _read_hunk(lines, i, m, cur["hunks"])
            continue
        _header_line(line, cur)
        i += 1
    b.finish()
    return b.index


_FILE_STATUS = {"added": "added", "removed": "deleted", "renamed": "renamed", "copied": "copied"}


def parse_pull_files(files: Iterable[dict]) -> DiffIndex:
    """Index the items of `GET /repos/{o}/{r}/pulls/{n}/files` (`filename`, `status`,
    `previous_filename`, `patch`): the fallback when GitHub refuses the whole diff as too large
    (HTTP 406). A file without `patch` (binary, or too large) has no commentable lines."""
    index = DiffIndex()
    for item in files:
        path = str(item.get("filename") or "")
        if not path:
            continue
        status = _FILE_STATUS.get(str(item.get("status")), "modified")
        previous = item.get("previous_filename") or None
        hunks: list[Hunk] = []
        lines = _split(str(item.get("patch") or ""))
        i = 0
        while i < len(lines):
            m = _HUNK.match(lines[i])
            i = _read_hunk(lines, i, m, hunks) if m else i + 1
        index.files[path] = FileDiff(
            path=path,
            old_path=None if status == "added" else (previous or path),
            new_path=None if status == "deleted" else path,
            status=status,
            binary=False,
            hunks=hunks,
        )
        if previous and previous != path:
            index.aliases.setdefault(previous, path)
    return index


def _read_hunk(lines: list[str], i: int, m: re.Match, hunks: list[Hunk]) -> int:
    """Read the hunk whose header is lines[i]; return the index of the line after it."""
    old_start, new_start = int(m.group(1)), int(m.group(3))
    old_count = int(m.group(2)) if m.group(2) is not None else 1
    new_count = int(m.group(4)) if m.group(4) is not None else 1
    hunk = Hunk(old_start, old_count, new_start, new_count)
    hunks.append(hunk)
    old_left, new_left = old_count, new_count
    old_no, new_no = old_start, new_start
    i += 1
    while i < len(lines) and (old_left > 0 or new_left > 0):
        line = lines[i]
        tag = line[:1]
        if tag == "\\":  # "\ No newline at end of file"
            pass
        elif tag == "+":
            if new_left <= 0:
                break
            hunk.right.add(new_no)
            new_no += 1
            new_left -= 1
        elif tag == "-":
            if old_left <= 0:
                break
            hunk.left.add(old_no)
            old_no += 1
            old_left -= 1
        elif tag == " " or line == "" or line == "\r":
            # Context (an empty line is context whose leading space was stripped in transit).
            if old_left <= 0 or new_left <= 0:
                break
            hunk.right.add(new_no)
            hunk.left.add(old_no)
            new_no += 1
            old_no += 1
            new_left -= 1
            old_left -= 1
        else:
            break  # malformed or truncated: keep what was read
        i += 1
    while i < len(lines) and lines[i].startswith("\\"):
        i += 1
    return i


# --------------------------------------------------------------------------- presentation


def annotate_diff(text: str) -> str:
    """The diff with old/new line numbers in front of every hunk line, for the model.

    `   12    14 | context`, `   13       |-removed`, `         15 |+added`; other lines (file
    headers, hunk headers) are kept as they are. The numbers are the ones a review comment uses:
    the right-hand (new) number for side RIGHT, the left-hand (old) number for side LEFT.
    """
    out: list[str] = []
    lines = _split(text)
    i = 0
    while i < len(lines):
        line = lines[i]
        m = _HUNK.match(line)
        if not m:
            out.append(line)
            i += 1
            continue
        out.append(line)
        old_no, new_no = int(m.group(1)), int(m.group(3))
        old_left = int(m.group(2)) if m.group(2) is not None else 1
        new_left = int(m.group(4)) if m.group(4) is not None else 1
        i += 1
        while i < len(lines) and (old_left > 0 or new_left > 0 or lines[i].startswith("\\")):
            line = lines[i]
            tag = line[:1]
            if tag == "\\":
                out.append(f"{'':>5} {'':>5} |{line}")
            elif tag == "+" and new_left > 0:
                out.append(f"{'':>5} {new_no:>5} |{line}")
                new_no, new_left = new_no + 1, new_left - 1
            elif tag == "-" and old_left > 0:
                out.append(f"{old_no:>5} {'':>5} |{line}")
                old_no, old_left = old_no + 1, old_left - 1
            elif (tag == " " or line in ("", "\r")) and old_left > 0 and new_left > 0:
                out.append(f"{old_no:>5} {new_no:>5} |{line or ' '}")
                old_no, new_no = old_no + 1, new_no + 1
                old_left, new_left = old_left - 1, new_left - 1
            else:
                break
            i += 1
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


# Extended header lines that name a side of a renamed or copied file.
_NAMING = {
    "rename from ": ("old", "renamed"),
    "rename to ": ("new", "renamed"),
    "copy from ": ("old", "copied"),
    "copy to ": ("new", "copied"),
}


def _header_line(line: str, cur: dict) -> None:
    """What one line of a file's extended header says about it (status, names, binary)."""
    if line.startswith("new file mode"):
        cur["status"] = "added"
    elif line.startswith("deleted file mode"):
        cur["status"] = "deleted"
    elif named := next((n for n in _NAMING if line.startswith(n)), None):
        side, status = _NAMING[named]
        cur[side], cur["status"] = _unquote(line[len(named) :].rstrip("\r")), status
    elif line.startswith("Binary files ") or line.startswith("GIT binary patch"):
        cur["binary"] = True
    elif line.startswith("--- "):
        name = _file_name(line[4:], "a/")
        if name is None:
            cur["status"] = "added"
        else:
            cur["old"] = name
    elif line.startswith("+++ "):
        name = _file_name(line[4:], "b/")
        if name is None:
            cur["status"] = "deleted"
        else:
            cur["new"] = name
