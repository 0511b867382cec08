"""Reading the project's Markdown guides, for tests that check or run what they document.

Headings and fenced code blocks are found the way a reader sees them: a line starting with ``#``
inside a code block (a shell comment) is no heading.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FENCE = re.compile(r"^```([\w+-]*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^(#{1,6}) +(.+?) *$", re.MULTILINE)
# A message a guide quotes for the reader to recognise: a code span in bold, **`...`**.
QUOTED = re.compile(r"\*\*`([^`]+)`\*\*")


@dataclass(frozen=True)
class Block:
    """A fenced code block: its language (lower case, may be empty), its text, and the line of
    its opening fence (1-based, in the text it was found in)."""

    language: str
    text: str
    line: int


def blocks(text: str, language: str | None = None) -> list[Block]:
    """The fenced code blocks of ``text`` in order, only those of ``language`` if given."""
    found = [
        Block(match.group(1).lower(), match.group(2), text.count("\n", 0, match.start()) + 1)
        for match in FENCE.finditer(text)
    ]
    return [block for block in found if language is None or block.language == language]


def code_blocks(text: str, language: str) -> list[str]:
    return [block.text for block in blocks(text, language)]


def _headings(text: str) -> list[tuple[int, int, str]]:
    """(offset, level, title) of every heading outside the code blocks."""
    fenced = [(match.start(), match.end()) for match in FENCE.finditer(text)]
    return [
        (match.start(), len(match.group(1)), match.group(2))
        for match in HEADING.finditer(text)
        if not any(start <= match.start() < end for start, end in fenced)
    ]


def section(text: str, title: str) -> str:
    """The text under the heading whose title is exactly ``title`` (any level), up to the next
    heading of the same or a higher level; subsections are included."""
    headings = _headings(text)
    for index, (offset, level, found) in enumerate(headings):
        if found == title:
            following = [start for start, other, _ in headings[index + 1 :] if other <= level]
            return text[offset : following[0] if following else len(text)]
    titles = [found for _, _, found in headings]
    raise AssertionError(f"no heading {title!r}; the headings are {titles}")


def subsections(text: str, title: str) -> list[str]:
    """The titles of the headings inside the section ``title``, in order."""
    body = section(text, title)
    return [found for _, _, found in _headings(body)[1:]]


def shell_commands(text: str, containing: str) -> list[str]:
    """Every command line of ``text``'s bash blocks that contains ``containing``, with its
    continuation lines joined and its whitespace normalised."""
    commands = []
    for block in code_blocks(text, "bash"):
        for command in block.replace("\\\n", " ").splitlines():
            if containing in command:
                commands.append(" ".join(command.split()))
    return commands


def quoted_messages(text: str) -> list[str]:
    """The messages ``text`` quotes for the reader to recognise (code spans in bold)."""
    return QUOTED.findall(text)


def message_pattern(quoted: str) -> re.Pattern[str]:
    """A quoted message as a pattern of the message itself: ``...`` stands for any text, and
    the quote may be the start of a longer line."""
    return re.compile(".*".join(re.escape(part) for part in quoted.split("...")), re.DOTALL)


def bullets(text: str) -> list[str]:
    """The items of ``text``'s top-level bullet lists ("- " at the start of a line), each with
    its continuation lines (indented) joined."""
    items: list[list[str]] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("- "):
            current = [line[2:].strip()]
            items.append(current)
        elif current is not None and line.startswith("  ") and line.strip():
            current.append(line.strip())
        else:
            current = None
    return [" ".join(item) for item in items]


def entry_for(text: str, message: str) -> str | None:
    """The bullet of ``text`` that quotes ``message`` (a line a program printed), if any."""
    for item in bullets(text):
        if any(message_pattern(quoted).match(message) for quoted in quoted_messages(item)):
            return item
    return None


def table_rows(text: str) -> list[list[str]]:
    """The body rows of ``text``'s Markdown tables, each as its cells (stripped); the header row
    and the ``| --- |`` line under it are left out."""
    rows: list[list[str]] = []
    previous = ""
    for line in text.splitlines():
        if line.startswith("|") and not re.fullmatch(r"\|[\s:|-]+\|?", line):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if previous.startswith("|"):
                rows.append(cells)
        previous = line if line.startswith("|") else ""
    return rows
