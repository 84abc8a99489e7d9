"""`/retry`, `/undo`, `/edit`, `/fork NAME` and `/copy [N]` of `mixchat chat --plain`.

They work on the session layer (`mixchat.session.steer`); each leaves the conversation saved as after a
turn. Replies still go to stdout and everything else to stderr, so a script that pipes commands in gets
exactly the replies out: a retry or an edit prints its new reply like any turn.
"""

from __future__ import annotations

from typing import Any

from mixchat.clipboard import code_blocks, osc52
from mixchat.session import ConversationError, steer

HELP = """\
  /retry           sample the last reply again (at temperature 0: the same reply)
  /undo            take back the last turn (its message and reply)
  /edit            replace your last message with the next line you type, and reply to it
  /fork NAME       save a copy of this conversation as NAME and go on in the copy (the original stays)
  /copy [N]        copy the last reply (or its N-th code block) to the clipboard (OSC 52)"""


def retry(repl: Any) -> None:
    repl.turn("", start=lambda cancel: steer.retry(repl.conv, cancel))


def undo(repl: Any) -> None:
    undone = steer.undo(repl.conv)
    how = (
        "" if undone.exact else f"; the cache is rebuilt from the transcript by the next turn ({undone.pending} tokens)"
    )
    repl.status(f"undid the last turn: {preview(undone.user_text)!r}{how}")
    repl.autosave()


def edit(repl: Any) -> None:
    conv = repl.conv
    if not conv.messages:
        raise ConversationError("nothing to edit: the conversation has no turn yet")
    if repl.interactive:
        repl.status(f"your last message: {preview(conv.messages[-2].content, 200)}")
        repl.status("type its new text on the next line (an empty line keeps it):")
    line = repl.read_line()
    text = (line or "").rstrip("\r\n")
    if not text.strip():
        repl.status("edit cancelled: the last message stays as it was")
        return
    repl.turn(text, start=lambda cancel: steer.edit(conv, text, cancel))


def fork(repl: Any, name: str) -> None:
    from mixchat.session.files import clean_name

    if not name:
        raise ConversationError("usage: /fork NAME")
    target = clean_name(name)
    conv = repl.conv
    if not conv.messages:
        raise ConversationError("nothing to fork yet: the conversation has no turn")
    if repl.store.exists(target):
        raise ConversationError(f"a conversation named {target!r} already exists; choose another name")
    repl.store.save(conv)  # the original, as it is now: it stays behind, saved
    original = conv.name
    steer.fork(conv, target, in_place=True)  # the buffer is reused: the copy is in the files just saved
    folder = repl.store.save(conv)
    repl.announced.add(conv.id)
    repl.status(f"forked {original!r} as {conv.name!r} in {folder}; going on in {conv.name!r}")


def copy(repl: Any, which: str) -> None:
    reply = steer.last_reply(repl.conv).content
    what = "the last reply"
    text = reply
    if which:
        blocks = code_blocks(reply)
        if not which.isdigit() or not 1 <= int(which) <= len(blocks):
            n = len(blocks)
            raise ConversationError(
                f"the last reply has {n} code block{'s' if n != 1 else ''}; use /copy 1..{n}"
                if n
                else "the last reply has no code block; /copy copies the whole reply"
            )
        text = blocks[int(which) - 1]
        what = f"code block {which} of the last reply"
    for stream in (repl.out, repl.err):
        if _isatty(stream):
            stream.write(osc52(text))  # Output.write flushes and keeps a failure instead of raising
            if hasattr(stream, "flush"):
                stream.flush()
            repl.status(f"copied {what} ({len(text)} characters) to the clipboard")
            return
    repl.status(f"no terminal to copy to (the clipboard needs one, through OSC 52); {what} follows:")
    repl.status(text)


def preview(text: str, limit: int = 60) -> str:
    one = " ".join(text.split())
    return one if len(one) <= limit else one[: limit - 1] + "…"


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
