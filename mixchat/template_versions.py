"""The chat-template versions mixchat lays out (see chat_template.py), below every tokenizer that names one.

v11 and v13 differ from v7 only in how tool calls and tool results are written, which a plain chat never
uses, so they share v7's layout.
"""

from __future__ import annotations

TEMPLATES = ("v1", "v3", "v7", "v11", "v13")
