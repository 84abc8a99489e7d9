"""`mixchat conversations repair NAME`: rebuild what can be rebuilt of a damaged transcript, lose nothing.

Opening a conversation refuses a transcript it cannot trust and leaves the files alone, because a person
with an editor (or a newer mixchat) may still want them as they are. Repair is the explicit next step: the
original transcript is first moved aside (`transcript.damaged-<time>.json`, kept, never deleted), then a
new one is written from the parts that are still sound:

- messages that have a role and text are kept, in order; others are dropped (and counted);
- settings out of range (a seed beyond 2^63, experts per token beyond the model's experts) go back to
  their defaults, one by one;
- token ids that are not a list of ids are dropped: the next open encodes the messages again;
- a malformed cache record is dropped: the next turn rebuilds the cache.

Without a model loaded there is no tokenizer, so ids that are well-formed but disagree with the messages
are left to the next open, which checks them (see `verify`) and rebuilds them from the messages.
A transcript from a newer mixchat is never rewritten.
"""

from __future__ import annotations

import json
import os
from dataclasses import fields
from datetime import datetime
from pathlib import Path
from typing import Any

from mixchat.chat_template import ROLES
from mixchat.session import transcript as tx
from mixchat.session.errors import ConversationError, TranscriptError
from mixchat.session.files import atomic_write_bytes, fsync_dir
from mixchat.session.lock import acquire
from mixchat.session.settings import ChatSettings, SettingsError
from mixchat.session.verify import settings_problem

TRANSCRIPT = "transcript.json"


def repair(root: Path, folder: Path) -> list[str]:
    """Repair the transcript in `folder` (under the conversations folder `root`); what was done, as phrases.

    An empty list: nothing needed repair. Raises ConversationError when nothing can be done (a newer
    format, a file that cannot be read at all).
    """
    path = folder / TRANSCRIPT
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConversationError(f"cannot read {path} ({e.strerror or e})") from None
    d = _parse(raw)
    if d is None:  # not JSON at all: keep it aside, there is nothing to build a transcript from
        aside = _move_aside(path)
        return [f"the transcript was not readable JSON; it was moved aside to {aside.name} (nothing could be rebuilt)"]
    version = d.get("format_version")
    if isinstance(version, int) and version > tx.FORMAT_VERSION:
        raise TranscriptError(f"{path} was saved by a newer mixchat (format {version}); it is left as it is")
    key = str(d.get("id") or folder.name)
    with acquire(root, key, str(d.get("name") or folder.name), "repair"):
        fixed, changes = _rebuild(d, folder.name)
        if not changes:
            try:
                tx.load(raw.decode("utf-8"))
                return []
            except (TranscriptError, UnicodeDecodeError):
                changes = ["rewrote its structure"]
        aside = _move_aside(path, copy=True)
        atomic_write_bytes(path, tx.dump(fixed).encode("utf-8"))
        tx.load(path.read_text(encoding="utf-8"))  # what repair writes must open
    return [*changes, f"the original was kept as {aside.name}"]


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        d = json.loads(raw.decode("utf-8", "replace"))
    except json.JSONDecodeError:
        return None
    return d if isinstance(d, dict) else None


def _rebuild(d: dict[str, Any], folder_name: str) -> tuple[dict[str, Any], list[str]]:
    """A valid transcript dict from `d`, and the list of what had to change."""
    changes: list[str] = []
    out = dict(d)
    if out.get("format") != tx.FORMAT or not isinstance(out.get("format_version"), int):
        out["format"], out["format_version"] = tx.FORMAT, tx.FORMAT_VERSION
        changes.append("restored its format header")
    if not isinstance(out.get("name"), str) or not out["name"].strip():
        out["name"] = folder_name
        changes.append(f"named it after its folder ({folder_name!r})")
    messages = out.get("messages")
    kept = [m for m in messages if _sound_message(m)] if isinstance(messages, list) else []
    dropped = (len(messages) if isinstance(messages, list) else 0) - len(kept)
    if not isinstance(messages, list) or dropped:
        changes.append(f"dropped {dropped} malformed message{'s' if dropped != 1 else ''}")
    out["messages"] = kept
    settings, fixed = _sound_settings(out.get("settings"), _n_experts(out))
    out["settings"] = settings
    changes += [f"reset the setting {k} to its default" for k in fixed]
    ids = out.get("ids")
    if not (isinstance(ids, list) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids)):
        out["ids"] = []
        out["cache"] = None
        changes.append("dropped its token ids (the next open encodes the messages again)")
    elif dropped:
        out["ids"], out["cache"] = [], None  # the ids belonged to the messages as they were
    if out.get("cache") is not None:
        try:
            from mixchat.session.cachefile import CacheRecord

            CacheRecord.from_json(out["cache"])
        except Exception:
            out["cache"] = None
            changes.append("dropped its malformed cache record (the next turn rebuilds the cache)")
    return out, changes


def _sound_message(m: Any) -> bool:
    return isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)


def _n_experts(d: dict[str, Any]) -> int | None:
    try:
        moe = d["model"]["fingerprint"]["architecture"].get("moe")
        return int(moe["num_experts"]) if moe else None
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _sound_settings(raw: Any, n_experts: int | None) -> tuple[dict[str, Any], list[str]]:
    """Each setting on its own: kept if it is valid, else back to its default."""
    defaults = ChatSettings().to_json()
    given = raw if isinstance(raw, dict) else {}
    out: dict[str, Any] = {}
    fixed: list[str] = []
    names = [f.name for f in fields(ChatSettings) if f.name != "system"]
    for key in names:
        if key not in given:
            continue
        try:
            ChatSettings.from_json({key: given[key]})
            ok = key != "experts_per_token" or settings_problem(given[key], n_experts) is None
        except (SettingsError, TypeError, ValueError, OverflowError):
            ok = False
        if ok:
            out[key] = given[key]
        else:
            out[key] = defaults[key]
            fixed.append(key)
    return {**{k: v for k, v in given.items() if k not in names}, **out}, fixed


def _move_aside(path: Path, copy: bool = False) -> Path:
    """transcript.json -> transcript.damaged-<time>.json beside it (a copy when a new one replaces it)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    aside = path.with_name(f"transcript.damaged-{stamp}.json")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"transcript.damaged-{stamp}-{n}.json")
    try:
        if copy:
            atomic_write_bytes(aside, path.read_bytes())
        else:
            os.rename(path, aside)
            fsync_dir(path.parent)
    except OSError as e:
        raise ConversationError(f"could not move {path} aside ({e.strerror or e}); nothing was changed") from None
    return aside
