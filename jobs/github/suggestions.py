"""Claude's change to a fork's pull request, offered back instead of pushed.

A fork's commits on a branch of the base repository would run its workflows with the
repository's secrets, so in `fork_pull_requests: suggest` mode (the default) nothing is pushed:
each changed stretch of a file that the pull request's diff shows becomes a GitHub suggestion (a
review comment whose ```suggestion block the contributor commits with one click), and what
suggestions cannot carry (new, deleted or renamed files, binary files, lines outside the diff)
becomes a patch that `git am` accepts, quoted in the tracking comment within a size bound.
A file is offered one way or the other, whole: a patch never overlaps a suggestion.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from jobs.github.diff import DiffIndex, FileDiff, Hunk, commentable, commentable_range

MAX_PATCH = 40_000  # characters of patch quoted in a comment (GitHub's limit is 65,536)
MAX_SUGGESTIONS = 50  # review comments in one review

Lines = Callable[[str], list[str] | None]  # a file's lines at a revision, None if absent


def fence(text: str, info: str = "") -> str:
    """`text` in a code fence longer than any run of backticks inside it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{info}\n{text}{'' if text.endswith(chr(10)) or not text else chr(10)}{ticks}"


@dataclass(frozen=True)
class Suggestion:
    path: str
    start_line: int
    line: int
    lines: tuple[str, ...]  # what replaces start_line..line (empty: delete them)

    def comment(self) -> dict:
        body = "Suggested by Claude:\n\n" + fence(
            "".join(f"{x}\n" for x in self.lines), "suggestion"
        )
        comment: dict = {"path": self.path, "line": self.line, "side": "RIGHT", "body": body}
        if self.start_line != self.line:
            comment.update(start_line=self.start_line, start_side="RIGHT")
        return comment


@dataclass
class Offer:
    suggestions: list[Suggestion] = field(default_factory=list)
    patch_paths: list[str] = field(default_factory=list)  # files only the patch carries


def offer(change: DiffIndex, pull: DiffIndex, old: Lines, new: Lines) -> Offer:
    """Split `change` (Claude's diff over the head, with no context lines) into suggestions on
    lines `pull` (the pull request's diff) shows, and the files left for the patch. `old` and
    `new` give a file's lines at the head and after Claude's change."""
    result = Offer()
    for path in change:
        diff = change.get(path)
        assert diff is not None
        suggestions = _as_suggestions(diff, pull, old(path), new(path))
        if suggestions is None or len(result.suggestions) + len(suggestions) > MAX_SUGGESTIONS:
            result.patch_paths.append(path)
        else:
            result.suggestions += suggestions
    return result


def _as_suggestions(
    diff: FileDiff, pull: DiffIndex, old: list[str] | None, new: list[str] | None
) -> list[Suggestion] | None:
    """Every hunk of one file as a suggestion, or None when any cannot be one."""
    if diff.status != "modified" or diff.binary or old is None or new is None:
        return None
    made = []
    for hunk in diff.hunks:
        suggestion = _as_suggestion(diff.path, hunk, old, new)
        if suggestion is None or not _shown(pull, suggestion):
            return None
        made.append(suggestion)
    return made


def _as_suggestion(path: str, hunk: Hunk, old: list[str], new: list[str]) -> Suggestion | None:
    added = new[hunk.new_start - 1 : hunk.new_start - 1 + hunk.new_count] if hunk.new_count else []
    if hunk.old_count:
        start, end = hunk.old_start, hunk.old_start + hunk.old_count - 1
        return Suggestion(path, start, end, tuple(added))
    # A pure insertion after line `old_start`: a suggestion replaces lines, so it takes the line
    # before (or, at the top of the file, the first line) and gives it back with the new ones.
    if not old:
        return None
    if hunk.old_start == 0:
        return Suggestion(path, 1, 1, (*added, old[0]))
    anchor = hunk.old_start
    return Suggestion(path, anchor, anchor, (old[anchor - 1], *added))


def _shown(pull: DiffIndex, s: Suggestion) -> bool:
    if s.start_line == s.line:
        return commentable(pull, s.path, s.line)
    return commentable_range(pull, s.path, s.start_line, s.line)


def quoted_patch(patch: str, limit: int = MAX_PATCH) -> str:
    """The patch for a comment: fenced whole, or cut with a note saying it will not apply."""
    if len(patch) <= limit:
        return fence(patch, "patch")
    cut = patch[:limit]
    return (
        fence(cut, "patch")
        + f"\n\n⚠️ The patch is {len(patch) // 1024} KB; only its first {limit // 1024} KB are "
        "shown, and a cut patch does not apply. Ask for a smaller change, or set "
        "`fork_pull_requests: follow_up` in `.github/claude.yml` to get a follow-up pull request."
    )
