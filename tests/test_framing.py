"""Prompt framing: no text from the thread can open or close a framing tag (property-based)."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from jobs.common.request import SessionRequest
from jobs.session.framing import FRAMING, TAGS, attribute, quote
from jobs.session.material import Section
from jobs.session.prompt import MATERIAL_RULE, implement_prompt

# Text built to look like our tags: their names in any case, slashes, backslashes, blanks and
# angle brackets, mixed with arbitrary characters.
PIECES = st.sampled_from(
    [
        *TAGS,
        *(t.upper() for t in TAGS),
        "<",
        "</",
        "< /",
        "<\\/",
        ">",
        " ",
        "\n",
        "\t",
        "/",
        "-",
        "_",
        "=",
        '"',
        "'",
        "&lt;",
        "<!--",
        "-->",
        "\u200b",
    ]
)
HOSTILE = st.lists(st.one_of(PIECES, st.text(max_size=5)), max_size=40).map("".join)
# What a reader could take for a framing tag, even a sloppy one.
ANY_TAG = re.compile(r"<[\s/\\]*(" + "|".join(TAGS) + r")(?![\w-])", re.IGNORECASE)


@given(HOSTILE)
def test_quoted_text_holds_no_framing_tag(text):
    quoted = quote(text)
    assert not ANY_TAG.search(quoted) and not FRAMING.search(quoted)
    assert quoted.replace("&lt;", "<") == text.replace("&lt;", "<")  # nothing else changes


@given(HOSTILE, HOSTILE)
def test_a_section_opens_and_closes_once_whatever_it_holds(text, author):
    rendered = Section("comment", text, {"author": author, "path": text}).render()
    assert [m.group(0) for m in ANY_TAG.finditer(rendered)] == ["<comment", "</comment"]
    head = rendered.split("\n", 1)[0]
    assert head.count('"') == 4 and head.endswith('">')  # the attributes stay in their quotes


@given(
    st.lists(
        st.tuples(st.sampled_from(["issue", "comment", "diff", "diff_hunk"]), HOSTILE), max_size=6
    )
)
def test_an_implement_prompt_has_one_instruction_and_one_material(sections):
    request = SessionRequest("d", 1, "o/r", 7, "alice", 1, "add a test")
    prompt = implement_prompt(request, "branch main", [Section(k, t) for k, t in sections])
    names = [m.group(1).lower() for m in ANY_TAG.finditer(prompt.replace(MATERIAL_RULE, ""))]
    assert names.count("instruction") == 2 and names.count("material") == 2
    instruction = prompt.split("<instruction>\n", 1)[1].split("\n</instruction>", 1)[0]
    assert instruction == "add a test"


def test_attribute_values_cannot_leave_their_quotes():
    assert attribute('a" onload="x') == "a&quot; onload=&quot;x"
    assert attribute("line\nbreak <b>") == "line break &lt;b&gt;"


def test_a_label_trigger_has_its_own_instruction():
    request = SessionRequest("d", 1, "o/r", 7, "alice", 1, "", trigger="label", label="claude")
    prompt = implement_prompt(request, "branch main", [Section("issue", "do X")])
    assert "<instruction>\nResolve the issue below (asked for by the label `claude`)." in prompt
