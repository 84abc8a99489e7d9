"""Conversations on disk: one folder each, a JSON transcript and a safetensors cache.

Layout under the data dir (see files.data_dir):

    conversations/<slug>/transcript.json        messages, settings, ids, fingerprint, cache record
    conversations/<slug>/cache-<n>.safetensors  live K/V of the cache, time order
    conversations/<slug>/undo-<n>.safetensors   the undo log of that cache (see session/undo.py), if any

Saving is crash-safe as a pair, not just file by file: each save writes its cache under a new number,
then atomically replaces the transcript that names it, and only then deletes older cache files. Killed at
any moment, the folder still holds a transcript and the exact cache file that transcript names.

Loading never loses a conversation. A transcript that cannot be read (or is from a newer mixchat) is
reported and left untouched (`repair` moves it aside and rebuilds what it can). A transcript whose ids do
not match its messages gets its ids rebuilt from the messages (`verify`). A cache that fails any check is
reported in one line and rebuilt from the transcript's ids, lazily, by the next turn's pre-fill.

Changes of more than one step are all-or-nothing: a new conversation whose first save fails leaves no
folder behind, a rename whose second step fails is undone, a delete is one rename out of sight. Every
storage failure becomes one ConversationError line. Renaming and deleting take the conversation's lock
(`lock`), so a conversation open in another process is not pulled away from under it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from mixchat.engine import Engine
from mixchat.session import transcript as tx
from mixchat.session.cachefile import CACHE_FILE, CacheProblem, cache_file_name, read_cache, write_cache
from mixchat.session.conversation import Conversation, encode_transcript
from mixchat.session.errors import ConversationError, TranscriptError
from mixchat.session.files import (
    atomic_write_bytes,
    clean_name,
    contained,
    data_dir,
    fsync_dir,
    remove_stale_temporaries,
    slug,
)
from mixchat.session.fingerprint import ModelFingerprint
from mixchat.session.lock import acquire
from mixchat.session.undo import UNDO_FILE, read_undo, undo_file_for, write_undo
from mixchat.session.verify import ids_mismatch, settings_problem
from mixchat.tokenizer import Tokenizer

TRANSCRIPT = "transcript.json"


@dataclass
class ConversationInfo:
    """One line of `conversations list`."""

    name: str
    folder: Path
    turns: int = 0
    tokens: int = 0
    created: str = ""
    updated: str = ""
    model_name: str = ""
    error: str | None = None  # the transcript could not be read (the folder name stands in for the name)


@dataclass
class Loaded:
    conversation: Conversation
    problem: str | None  # one line when the saved cache could not be used (it is rebuilt from the ids)


class ConversationStore:
    def __init__(self, data: str | os.PathLike[str] | None = None) -> None:
        self.data_dir = data_dir(data)
        self.root = self.data_dir / "conversations"
        for path in (self.data_dir, self.root):
            if path.exists() and not path.is_dir():
                raise ConversationError(f"the data dir {path} is a file, not a folder (see --data-dir)")

    # ---- finding ------------------------------------------------------------------------------------------
    def _folders(self) -> list[Path]:
        try:
            if not self.root.is_dir():
                return []
            return sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError as e:
            raise ConversationError(f"cannot read the conversations in {self.root} ({e.strerror or e})") from None

    def find(self, name: str) -> Path | None:
        """The folder of the conversation called `name` (or whose folder is called `name`), if any."""
        clean = clean_name(name)
        path = contained(self.root, slug(clean))
        if (path / TRANSCRIPT).is_file():
            return path
        with contextlib.suppress(ConversationError):
            direct = contained(self.root, clean)
            if (direct / TRANSCRIPT).is_file():
                return direct
        for folder in self._folders():  # a rename interrupted between its two steps, or a hand-made folder
            try:
                if tx.load(_read_text(folder / TRANSCRIPT)).name == clean:
                    return folder
            except (TranscriptError, OSError):
                continue
        return None

    def folder(self, name: str) -> Path:
        path = self.find(name)
        if path is None:
            raise ConversationError(f"no conversation named {name!r} in {self.root} (see `mixchat conversations list`)")
        return path

    def exists(self, name: str) -> bool:
        return self.find(name) is not None

    def read(self, name: str) -> tx.Transcript:
        """The transcript of `name`; TranscriptError (one line, files untouched) if it cannot be used."""
        folder = self.folder(name)
        path = folder / TRANSCRIPT
        try:
            return tx.load(_read_text(path))
        except TranscriptError as e:
            raise TranscriptError(
                f"conversation {name!r}: {e} ({path}); its files were left untouched "
                f"(`mixchat conversations repair` rebuilds what it can)"
            ) from None
        except OSError as e:
            raise TranscriptError(
                f"conversation {name!r}: its transcript {path} cannot be read ({e.strerror})"
            ) from None

    def list(self) -> list[ConversationInfo]:
        """Every conversation, most recently updated first; unreadable ones are listed with their error."""
        out: list[ConversationInfo] = []
        for folder in self._folders():
            if not (folder / TRANSCRIPT).is_file():
                continue
            try:
                t = tx.load(_read_text(folder / TRANSCRIPT))
            except (TranscriptError, OSError) as e:
                out.append(ConversationInfo(folder.name, folder, error=str(e)))
                continue
            out.append(ConversationInfo(t.name, folder, t.turns, len(t.ids), t.created, t.updated, t.model_name))
        out.sort(key=lambda i: i.updated, reverse=True)
        return out

    def latest(self) -> str | None:
        for info in self.list():
            if info.error is None:
                return info.name
        return None

    def new_name(self) -> str:
        """A fresh name from the local time, e.g. chat-2025-01-31-142501 (with -2, -3... if taken)."""
        base = "chat-" + datetime.now().strftime("%Y-%m-%d-%H%M%S")
        name, n = base, 1
        while (self.root / slug(name)).exists():
            n += 1
            name = f"{base}-{n}"
        return name

    # ---- loading ------------------------------------------------------------------------------------------
    def load(
        self,
        name: str,
        engine: Engine,
        tokenizer: Tokenizer,
        fingerprint: ModelFingerprint,
        model_name: str = "",
    ) -> Loaded:
        """Open a saved conversation on this model, restoring its cache if every check passes."""
        folder = self.folder(name)
        t = self.read(name)
        conv = Conversation(
            engine,
            tokenizer,
            fingerprint,
            t.settings,
            name=t.name,
            model_name=model_name or t.model_name,
            messages=t.messages,
            ids=t.ids,
            conversation_id=t.id or None,
            created=t.created or None,
            updated=t.updated or None,
        )
        moe = conv.engine.model.args.moe
        bad = settings_problem(t.settings.experts_per_token, moe.num_experts if moe is not None else None)
        if bad is not None:
            raise TranscriptError(
                f"conversation {t.name!r}: its transcript {folder / TRANSCRIPT} has {bad}; fix it there or run "
                "`mixchat conversations repair`"
            )
        problem = self._attach_cache(conv, t, folder)
        if problem is not None:
            conv.invalidate_cache()
            problem = (
                f"conversation {t.name!r}: {problem}; rebuilding the cache from the transcript ({len(conv.ids)} tokens)"
            )
        return Loaded(conv, problem)

    def load_for(self, runtime: Any, name: str) -> Loaded:
        from mixchat.session.fingerprint import fingerprint_runtime

        return self.load(name, runtime.engine, runtime.tokenizer, fingerprint_runtime(runtime), runtime.name)

    def _attach_cache(self, conv: Conversation, t: tx.Transcript, folder: Path) -> str | None:
        """Restore the saved cache into conv; otherwise say why not (conv.ids are repaired if needed)."""
        fp = conv.fingerprint
        vocab = min(conv.model.args.vocab_size, conv.tokenizer.vocab_size)
        ids_usable = all(i < vocab for i in t.ids) and (bool(t.ids) or not t.messages)
        mismatch = ids_mismatch(conv.tokenizer, t.settings.system, t.messages, t.ids) if ids_usable else None
        if not fp.same_tokenizer(t.fingerprint) or not ids_usable or mismatch is not None:
            conv.ids = encode_transcript(conv.tokenizer, t.settings.system, t.messages)
            if t.fingerprint is None:
                why = "it has no model fingerprint"
            elif not fp.same_tokenizer(t.fingerprint):
                why = "it was saved with a different tokenizer"
            elif not ids_usable:
                why = "its token ids are missing or do not fit this model"
            else:
                why = f"its token ids disagree with its messages: {mismatch}"
            conv.dirty = True  # the next save writes the repaired ids
            return f"{why}; the conversation was rebuilt from its messages"
        diff = fp.difference(t.fingerprint)
        if diff is not None:
            return f"it was saved with a different model ({diff})"
        if not t.ids:
            return None
        if t.cache_problem is not None:
            return t.cache_problem
        if t.cache is None:
            return "it has no saved cache"
        try:
            read_cache(folder / t.cache.file, t.cache, fp, conv.cache, len(t.ids))
        except CacheProblem as e:
            return str(e)
        with contextlib.suppress(CacheProblem):  # without its undo log a conversation is whole: undo pre-fills
            conv.undo_log = read_undo(
                folder / undo_file_for(t.cache.file), t.cache, conv.cache, len(t.ids), len(t.messages)
            )
        return None

    # ---- saving -------------------------------------------------------------------------------------------
    def save(self, conv: Conversation, name: str | None = None) -> Path:
        """Save (or, with `name`, save as) atomically; returns the folder. Sets conv.name."""
        if name is not None:
            target = clean_name(name)
        elif conv.name is not None:
            target = clean_name(conv.name)
        else:
            target = self.new_name()
        existing = self.find(target)
        folder = existing if existing is not None else contained(self.root, slug(target))
        new_folder = not folder.exists()
        if existing is not None:
            try:
                other = tx.load(_read_text(existing / TRANSCRIPT))
            except (TranscriptError, OSError):
                raise ConversationError(
                    f"a conversation named {target!r} exists and cannot be read; it is not overwritten"
                ) from None
            if other.id != conv.id:
                raise ConversationError(f"a conversation named {target!r} already exists; choose another name")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(folder)
            olds = [p for p in folder.iterdir() if CACHE_FILE.match(p.name)]
            old_logs = [p for p in folder.iterdir() if UNDO_FILE.match(p.name)]
            record = None
            if conv.cache.seen[0] > 0:
                number = 1 + max((int(CACHE_FILE.match(p.name)[1]) for p in olds), default=0)  # type: ignore[index]
                record = write_cache(folder / cache_file_name(number), conv.cache, conv.fingerprint)
                write_undo(folder / undo_file_for(record.file), conv.undo_log, record)  # before the transcript
            conv.name = target
            atomic_write_bytes(folder / TRANSCRIPT, tx.dump(tx.transcript_dict(conv, record)).encode("utf-8"))
            for p in olds + old_logs:  # only now: until the transcript was replaced, the old one needed its cache
                with contextlib.suppress(OSError):
                    p.unlink()
        except OSError as e:
            if new_folder:  # all or nothing: a new conversation that could not be saved leaves no folder
                shutil.rmtree(folder, ignore_errors=True)
            raise ConversationError(f"could not save conversation {target!r} in {folder}: {e.strerror or e}") from None
        conv.dirty = False
        return folder

    # ---- managing -----------------------------------------------------------------------------------------
    def rename(self, old: str, new: str) -> str:
        """Rename a conversation (folder and stored name); returns the new, cleaned name."""
        src = self.folder(old)
        t = self.read(old)  # refuse to rename what cannot be read: its name could not be updated
        target = clean_name(new)
        dst = contained(self.root, slug(target))
        if self.find(target) not in (None, src) or (dst.exists() and dst != src):
            raise ConversationError(f"a conversation named {target!r} already exists")
        with acquire(self.root, t.id, t.name, "rename"):
            try:
                self._rename(src, dst, target)
            except OSError as e:
                raise ConversationError(f"could not rename {t.name!r} to {target!r}: {e.strerror or e}") from None
        return target

    def _rename(self, src: Path, dst: Path, target: str) -> None:
        """Folder, then stored name; if the second step fails, the first is undone."""
        if dst != src:
            os.rename(src, dst)  # first the folder: should we stop here, `find` still finds it by its stored name
            fsync_dir(self.root)
        try:
            d = tx.parse(_read_text(dst / TRANSCRIPT))
            d["name"] = target
            atomic_write_bytes(dst / TRANSCRIPT, tx.dump(d).encode("utf-8"))
        except OSError:
            if dst != src:
                with contextlib.suppress(OSError):
                    os.rename(dst, src)
                    fsync_dir(self.root)
            raise

    def delete(self, name: str) -> None:
        """Remove a conversation's folder (readable or not)."""
        folder = self.folder(name)
        try:
            key = self.read(name).id
        except TranscriptError:
            key = None  # an unreadable transcript names no id; nobody can have it open either
        trash = self.root / f".deleting-{os.getpid()}-{os.urandom(4).hex()}"
        with contextlib.ExitStack() as stack:
            if key is not None:
                stack.enter_context(acquire(self.root, key, name, "delete"))
            try:
                os.rename(folder, trash)  # atomic: the conversation is gone at once, even if removal is interrupted
            except OSError as e:
                raise ConversationError(f"could not delete {name!r}: {e.strerror or e}") from None
        shutil.rmtree(trash, ignore_errors=True)

    def export(self, name: str, fmt: str = "md") -> str:
        t = self.read(name)
        if fmt == "md":
            return tx.to_markdown(t)
        if fmt == "json":
            return tx.to_export_json(t)
        raise ConversationError(f"unknown export format {fmt!r}: use md or json")


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise TranscriptError("its transcript is not UTF-8 text") from None
