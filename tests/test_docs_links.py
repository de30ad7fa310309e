"""
Every relative link of the README and docs/ reaches a file of the repository, and a link to a
section (`page.md#anchor`) reaches a heading of that page: the pages move often, and a dead
link is how a reader learns that a number has no source.
"""

import re

import pytest

from tests.helpers import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# [text](target), with no nested brackets in the target; skips code spans first.
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`[^`]*`")


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to dashes."""
    text = CODE_SPAN.sub(lambda m: m.group(0).strip("`"), heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors_of(page):
    lines, anchors, in_code = page.read_text().splitlines(), set(), False
    for line in lines:
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            anchors.add(github_anchor(line.lstrip("#")))
    return anchors


def links_of(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for target in LINK.findall(CODE_SPAN.sub("", text)):
        if not re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            yield target


def test_github_anchor_matches_githubs_rule():
    assert github_anchor(" Command (a) to the bit") == "command-a-to-the-bit"
    assert github_anchor("On `trees_val`") == "on-trees_val"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_reach_files_and_headings(page):
    dead = []
    for target in links_of(page):
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            dead.append(f"{target}: no file {linked.relative_to(REPO)}")
        elif anchor and linked.suffix == ".md" and anchor not in anchors_of(linked):
            dead.append(f"{target}: no heading with anchor #{anchor} in {linked.name}")
    assert not dead, f"dead links in {page.relative_to(REPO)}:\n" + "\n".join(dead)
