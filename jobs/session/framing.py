"""Quoting untrusted text inside the prompt's framing tags.

A prompt marks the requester's instruction and the thread's material with tags (`<instruction>`,
`<material>`, `<comment author="…">`, `<diff>`…). Text that others wrote must never open or close
one of them, or it could end the material early and pass for instructions. `quote` turns the `<`
of anything that a reader (or a model) could take for one of these tags, in any case and with any
spacing, into `&lt;`; code in a diff keeps every other `<` as it was. `attribute` makes a value
that cannot leave its quotes.
"""

from __future__ import annotations

import html
import re

TAGS = (
    "instruction",
    "material",
    "issue",
    "pull_request",
    "comment",
    "review_comment",
    "diff",
    "diff_hunk",
    "focus",
    "title",
    "body",
    "review",
    "check_run",
)
# `<`, optional blanks, an optional `/` (or a backslash-escaped one), blanks, one of our names, and
# anything but a name character after it: `</material>`, `< / MATERIAL >`, `<material\n`.
FRAMING = re.compile(r"<(?=[\s/\\]*(?:" + "|".join(TAGS) + r")(?![\w-]))", re.IGNORECASE)


# What a human reader of GitHub's rendering never sees: HTML comments (a trailing unclosed one
# too), and zero-width, word-joiner, BOM, soft-hyphen and bidirectional-control characters
# (Trojan Source). Material drops them; a review shows them, as findings.
HIDDEN = re.compile(r"<!--.*?(-->|$)", re.DOTALL)
INVISIBLE = re.compile("[\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")


def quote(text: str) -> str:
    """`text` as material: no framing tag can open or close inside it."""
    return FRAMING.sub("&lt;", text)


def attribute(value: object) -> str:
    """A value for `name="…"`: no quote, angle bracket or line break can end it."""
    return html.escape(" ".join(str(value).split()), quote=True)


def tag(kind: str, text: str, **attributes: object) -> str:
    """`text` quoted inside `<kind …>` and `</kind>`, with escaped attributes."""
    assert kind in TAGS, kind
    attrs = "".join(f' {name}="{attribute(value)}"' for name, value in attributes.items())
    return f"<{kind}{attrs}>\n{quote(text)}\n</{kind}>"
