"""Text for the clipboard: the fenced code blocks of a reply, and the OSC 52 sequence that copies text.

OSC 52 asks the terminal itself to set the clipboard, so copying works over ssh and inside tmux (where
allowed), with no clipboard program on the machine that runs the model. Plain text in, no terminal I/O here.
"""

from __future__ import annotations

import base64
import re

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})[^\n]*$")


def code_blocks(markdown: str) -> list[str]:
    """The contents of the fenced code blocks (``` or ~~~) in `markdown`, in order, without the fences.

    An unclosed block runs to the end of the text, as Markdown renders it (a reply cut off mid-block still
    has its code copied).
    """
    blocks: list[str] = []
    lines: list[str] | None = None
    fence = ""
    for line in markdown.splitlines():
        m = _FENCE.match(line)
        if lines is None:
            if m:
                fence, lines = m["fence"], []
        elif m and m["fence"][0] == fence[0] and len(m["fence"]) >= len(fence) and not line.strip()[len(m["fence"]) :]:
            blocks.append("\n".join(lines))
            lines = None
        else:
            lines.append(line)
    if lines is not None:
        blocks.append("\n".join(lines))
    return blocks


def osc52(text: str) -> str:
    """The escape sequence that puts `text` on the terminal's clipboard (the same one Textual writes)."""
    return "\x1b]52;c;" + base64.b64encode(text.encode("utf-8")).decode("ascii") + "\a"
