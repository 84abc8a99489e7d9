"""The transcript: a conversation as human-readable JSON, and its Markdown export.

The transcript is what must never be lost. It holds the messages and settings a person can read and edit,
the exact token ids (the conversation as the model saw it, from which the cache can always be rebuilt), the
fingerprint of the model that made it, and a record of the cache file saved with it.

Versioning: `format_version` is bumped for changes an older reader would misread. A reader refuses newer
versions and leaves the file alone, rather than guess and then overwrite it in the old format.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from mixchat import __version__
from mixchat.chat_template import ROLES
from mixchat.session.cachefile import CacheProblem, CacheRecord
from mixchat.session.conversation import ChatMessage, Conversation
from mixchat.session.errors import TranscriptError
from mixchat.session.fingerprint import ModelFingerprint
from mixchat.session.settings import ChatSettings, SettingsError

FORMAT = "mixchat-conversation"
FORMAT_VERSION = 1
FINISH_REASONS = ("eos", "length", "cancelled")
_IDS_PER_LINE = 32


@dataclass
class Transcript:
    id: str
    name: str
    created: str
    updated: str
    model_name: str
    fingerprint: ModelFingerprint | None
    settings: ChatSettings
    messages: list[ChatMessage]
    ids: list[int]
    cache: CacheRecord | None
    cache_problem: str | None = None  # a malformed cache record: the transcript is fine, the cache is not

    @property
    def turns(self) -> int:
        return sum(1 for m in self.messages if m.role == "user")


def transcript_dict(conv: Conversation, cache: CacheRecord | None) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    if conv.settings.system:
        messages.append({"role": "system", "content": conv.settings.system})
    for m in conv.messages:
        d: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.finish_reason is not None:
            d["finish_reason"] = m.finish_reason
        if m.tokens is not None:
            d["tokens"] = m.tokens
        messages.append(d)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "saved_by": f"mixchat {__version__}",
        "id": conv.id,
        "name": conv.name,
        "created": conv.created,
        "updated": conv.updated,
        "model": {"name": conv.model_name, "fingerprint": conv.fingerprint.to_json()},
        "settings": conv.settings.to_json(),
        "messages": messages,
        "ids": list(conv.ids),
        "cache": cache.to_json() if cache is not None else None,
    }


def dump(d: dict[str, Any]) -> str:
    """Indented JSON, except that the token ids are packed many to a line (they would run to thousands)."""
    body = {k: ("\0IDS\0" if k == "ids" else v) for k, v in d.items()}
    text = json.dumps(body, indent=2, ensure_ascii=False)
    ids = d.get("ids") or []
    rows = [", ".join(str(int(i)) for i in ids[j : j + _IDS_PER_LINE]) for j in range(0, len(ids), _IDS_PER_LINE)]
    packed = "[\n    " + ",\n    ".join(rows) + "\n  ]" if rows else "[]"
    return text.replace('\n  "ids": "\\u0000IDS\\u0000"', '\n  "ids": ' + packed, 1) + "\n"


def parse(text: str) -> dict[str, Any]:
    """The raw JSON object; raises TranscriptError for text that is not one, or a newer format."""
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise TranscriptError(f"its transcript is not valid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise TranscriptError("its transcript is not a mixchat conversation")
    version = d.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise TranscriptError("its transcript has no valid format_version")
    if version > FORMAT_VERSION:
        raise TranscriptError(
            f"it was saved by a newer mixchat (transcript format {version}; this one reads up to {FORMAT_VERSION})"
        )
    return d


def load(text: str) -> Transcript:
    """Parse and validate a transcript; raises TranscriptError with a one-line reason."""
    d = parse(text)
    try:
        messages_raw = d["messages"]
        if not isinstance(messages_raw, list):
            raise TranscriptError("its transcript's messages are not a list")
        system_parts: list[str] = []
        messages: list[ChatMessage] = []
        for i, m in enumerate(messages_raw):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise TranscriptError(f"its transcript's message {i} needs a role ({'/'.join(ROLES)}) and content")
            if m["role"] == "system":
                if m["content"]:
                    system_parts.append(m["content"])
                continue
            reason = m.get("finish_reason")
            tokens = m.get("tokens")
            messages.append(
                ChatMessage(
                    m["role"],
                    m["content"],
                    reason if reason in FINISH_REASONS else None,
                    tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else None,
                )
            )
        ids = d.get("ids", [])
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
            raise TranscriptError("its transcript's ids are not a list of token ids")
        try:
            settings = ChatSettings.from_json(d.get("settings") or {}, "\n\n".join(system_parts) or None)
        except SettingsError as e:
            raise TranscriptError(f"its transcript has bad settings ({e})") from None
        raw_model = d.get("model")
        model: dict[str, Any] = raw_model if isinstance(raw_model, dict) else {}
        cache: CacheRecord | None = None
        cache_problem: str | None = None
        if d.get("cache") is not None:
            try:
                cache = CacheRecord.from_json(d["cache"])
            except CacheProblem as e:
                cache_problem = str(e)
        name = str(d["name"])
        return Transcript(
            # A hand-made transcript without an id gets one derived from its name, the same on every read.
            id=str(d.get("id") or "name:" + hashlib.sha256(name.encode("utf-8", "replace")).hexdigest()[:24]),
            name=name,
            created=str(d.get("created") or ""),
            updated=str(d.get("updated") or d.get("created") or ""),
            model_name=str(model.get("name") or ""),
            fingerprint=ModelFingerprint.from_json(model.get("fingerprint")),
            settings=settings,
            messages=messages,
            ids=list(ids),
            cache=cache,
            cache_problem=cache_problem,
        )
    except KeyError as e:
        raise TranscriptError(f"its transcript lacks the field {e.args[0]!r}") from None


def to_markdown(t: Transcript) -> str:
    lines = [f"# {t.name}", ""]
    meta = [
        f"model: {t.model_name or 'unknown'}",
        f"created {t.created}",
        f"updated {t.updated}",
        f"{t.turns} turn{'s' if t.turns != 1 else ''}",
        f"{len(t.ids)} tokens",
    ]
    lines += ["*" + " · ".join(meta) + "*", ""]
    if t.settings.system:
        lines += ["## System", "", t.settings.system, ""]
    for m in t.messages:
        lines += ["## " + ("User" if m.role == "user" else "Assistant"), "", m.content, ""]
        if m.role == "assistant" and m.finish_reason in ("length", "cancelled"):
            why = "cancelled" if m.finish_reason == "cancelled" else "token limit reached"
            lines += [f"*(reply stopped: {why})*", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def to_export_json(t: Transcript) -> str:
    d = {
        "name": t.name,
        "created": t.created,
        "updated": t.updated,
        "model": t.model_name,
        "settings": t.settings.to_json(),
        "system": t.settings.system,
        "messages": [
            {
                k: v
                for k, v in {"role": m.role, "content": m.content, "finish_reason": m.finish_reason}.items()
                if v is not None
            }
            for m in t.messages
        ],
        "ids": t.ids,
    }
    return dump(d)
