"""`mixchat chat --plain`: a line REPL on stdin/stdout, for terminals, pipes and scripts.

One line of stdin is one user turn; the reply streams to stdout as it is generated, followed by a newline.
Everything else (status, /stats, /help, warnings) goes to stderr, so `... | mixchat chat --plain > out`
captures exactly the replies. There are no prompts or colours unless stdin is a terminal.

The conversation is saved after every turn, before anything depends on stdout: a reader that goes away
or a full disk behind stdout ends the session only after the turn is saved (`mixchat.cli.output`).
Generation runs in a worker thread: Ctrl-C, SIGTERM and SIGHUP then only set the engine's cancel event
(checked between forward passes), so an interrupted reply is saved whole, never half-written
(`mixchat.cli.signals`). While a conversation is open here, it is locked against other processes
(`mixchat.session.lock`).
"""

from __future__ import annotations

import argparse
import contextlib
import queue
import sys
import threading
import unicodedata
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from mixchat.cli.common import add_conversation_options, add_model_options, load_from_args
from mixchat.cli.conversations import add_data_dir_option
from mixchat.cli.output import Output, say, silence_stdout
from mixchat.cli.signals import STOP
from mixchat.engine import DEFAULT_CHUNK_SIZE
from mixchat.runtime import UserError
from mixchat.units import human_bytes

DESCRIPTION = """\
Chat with a model. With --plain, a line REPL: each line of stdin is a user turn, each reply streams to
stdout, EOF ends the session; replies go to stdout, everything else to stderr, and Ctrl-C stops a reply.
The conversation keeps its KV cache across turns, is saved after every turn, and can be resumed later
without pre-filling it again (--resume)."""

EPILOG = """\
in-line commands (a line starting with '/'; start a message with '//' to send a literal '/'):
  /save [NAME]     save now (as NAME: a copy under that name, which later turns are saved to)
  /new             start a new conversation (the current one stays saved)
  /system [TEXT]   show the system prompt, or set it ('-' clears it); once a conversation has turns,
                   setting it starts a new conversation, since the prompt is part of the first turn
  /stats           tokens in the cache, window fill, wraps, speed, experts used by the last reply
  /retry           sample the last reply again (at temperature 0: the same reply)
  /undo            take back the last turn (its message and reply)
  /edit            replace your last message with the next line, and reply to it
  /fork NAME       save a copy of this conversation as NAME and go on in the copy (the original stays)
  /copy [N]        copy the last reply (or its N-th code block) to the clipboard (OSC 52)
  /help            this list
  /quit            end the session (EOF does too)

examples:
  mixchat chat --plain
  printf 'Hello\\nTell me more\\n' | mixchat chat --plain --temperature 0 > replies.txt
  mixchat chat --plain --resume                 # continue the most recent conversation
  mixchat chat --plain --conversation notes     # open 'notes', or start it"""

HELP = EPILOG.split("\n\nexamples:")[0]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "chat",
        help="chat with a model (--plain: a line REPL for pipes and scripts)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--plain", action="store_true", help="line REPL on stdin/stdout instead of the TUI")
    g = p.add_argument_group("conversation")
    which = g.add_mutually_exclusive_group()
    which.add_argument("--conversation", metavar="NAME", help="open NAME if it exists, else start it under NAME")
    which.add_argument(
        "--resume",
        nargs="?",
        const="",
        metavar="NAME",
        help="continue NAME, or without NAME the most recently updated conversation",
    )
    g.add_argument(
        "--fork",
        metavar="NEW_NAME",
        help="with --resume/--conversation: continue a copy named NEW_NAME (works while the original "
        "is open elsewhere)",
    )
    g.add_argument("--system", metavar="TEXT", help="system prompt of a new conversation")
    add_data_dir_option(g)
    # Defaults are None so that a resumed conversation keeps its saved settings unless a flag overrides them.
    s = p.add_argument_group("generation (default: the conversation's saved settings, else the value shown)")
    add_conversation_options(s)
    add_model_options(p, chunk=False)
    p.set_defaults(func=run)


_OVERRIDES = ("temperature", "top_p", "max_tokens", "seed", "chunk_size", "experts_per_token")


def run(args: argparse.Namespace) -> int:
    from mixchat.session import ChatSettings, Conversation, ConversationStore, SettingsError
    from mixchat.session.files import clean_name

    if not args.plain:
        from mixchat.cli.tui_command import run as run_app

        return run_app(args)
    if sys.stdin is None:
        raise UserError("stdin is closed: there is nothing to read (pipe the turns in, or run in a terminal)")
    from mixchat.session.lock import acquire

    store = ConversationStore(args.data_dir)
    target: str | None = None
    resume = False
    if args.resume is not None:
        target = args.resume or store.latest()
        if target is None:
            raise UserError(f"no saved conversation to resume in {store.root}")
        resume = True
    elif args.conversation is not None:
        target = clean_name(args.conversation)
        resume = store.exists(target)
    fork = clean_name(args.fork) if args.fork is not None else None
    if fork is not None and not resume:
        raise UserError("--fork copies a saved conversation: give it with --resume NAME or --conversation NAME")
    if fork is not None and store.exists(fork):
        raise UserError(f"a conversation named {fork!r} already exists; choose another name for the copy")
    lock = None
    if resume:
        assert target is not None
        saved = store.read(target)  # an unreadable transcript fails here, before a model is loaded
        if args.system is not None and saved.messages and (args.system or None) != saved.settings.system:
            raise UserError(f"--system only applies to a new conversation; {saved.name!r} already has turns")
        if fork is None:  # fail now, not after loading the model; a copy needs no lock on the original
            lock = acquire(store.root, saved.id, saved.name)
    overrides = {k: getattr(args, k) for k in _OVERRIDES if getattr(args, k) is not None}

    # The conversation's own chunk size is applied before every turn; the engine's initial one does not matter.
    rt = load_from_args(argparse.Namespace(**{**vars(args), "chunk_size": args.chunk_size or DEFAULT_CHUNK_SIZE}))
    moe = rt.model.args.moe
    if args.experts_per_token is not None and (moe is None or args.experts_per_token > moe.num_experts):
        limit = f"between 1 and {moe.num_experts}" if moe else "only for mixture-of-experts models"
        raise UserError(f"--experts-per-token is {limit}")
    try:
        if resume:
            assert target is not None
            loaded = store.load_for(rt, target)
            conv = loaded.conversation
            if loaded.problem:
                print(f"mixchat: {loaded.problem}", file=sys.stderr)
            conv.settings = replace(conv.settings, **overrides)
            if args.system is not None and not conv.messages:
                conv.set_system(args.system)
        else:
            conv = Conversation.from_runtime(rt, ChatSettings(system=args.system or None, **overrides), name=target)
    except SettingsError as e:
        raise UserError(str(e)) from None
    if fork is not None:
        conv = fork_conversation(store, conv, fork)
    if lock is None:
        lock = acquire(store.root, conv.id, conv.name or "new conversation")
    repl = PlainRepl(rt, store, conv, resumed=resume)
    repl.lock = lock
    try:
        return repl.loop()
    finally:
        repl.lock.release()


def fork_conversation(store: Any, conv: Any, name: str) -> Any:
    """Make `conv` a copy saved as `name` (a new id, so it is locked and saved on its own)."""
    import uuid

    conv.id = uuid.uuid4().hex
    conv.name = name
    conv.dirty = True
    store.save(conv)
    say(f"mixchat: continuing a copy named {name!r}")
    return conv


class _Done:
    pass


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class PlainRepl:
    """The read-send-print loop; streams are parameters so tests can drive it in-process."""

    def __init__(
        self,
        runtime: Any,
        store: Any,
        conversation: Any,
        resumed: bool = False,
        stdin: TextIO | None = None,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
    ) -> None:
        from mixchat.session.lock import ConversationLock

        self.rt = runtime
        self.store = store
        self.conv = conversation
        self.resumed = resumed
        self.inp = stdin or sys.stdin
        self.out = Output(stdout or sys.stdout)
        self.err = stderr or sys.stderr
        self.interactive = _isatty(self.inp)
        self.terminal_out = _isatty(self.out.stream)
        self.announced: set[str] = set()  # conversation ids whose save location was already reported
        self._progress_shown = False
        self.lock = ConversationLock(Path(), None)  # `run` hands over the lock it took
        self.unsaved: str | None = None  # why the last save failed; the session then ends with status 1
        self.error_status = 0  # 2 once a turn failed (e.g. the context is full)
        self._cancel: threading.Event | None = None
        for stream in (self.inp, self.out.stream):
            reconfigure: Callable[..., None] | None = getattr(stream, "reconfigure", None)
            if reconfigure is not None:
                reconfigure(errors="replace")

    # ---- I/O ------------------------------------------------------------------------------------------------
    def status(self, text: str) -> None:
        with contextlib.suppress(OSError, ValueError, AttributeError):  # stderr gone (a hung-up terminal)
            print(text, file=self.err, flush=True)

    def read_line(self) -> str | None:
        """The next line, or None at EOF; a stop signal while waiting ends the session (everything is saved)."""
        with STOP.interruptible():
            try:
                if self.interactive and self.terminal_out and self.inp is sys.stdin:
                    return input("> ")  # line editing where the terminal offers it
                if self.interactive:
                    self.err.write("> ")
                    self.err.flush()
                line = self.inp.readline()
                return line if line else None
            except EOFError:
                return None
            except KeyboardInterrupt:
                return None

    def progress(self, done: int, total: int) -> None:
        """A long pre-fill (a pasted document, a cache being rebuilt) counts up on a terminal's stderr."""
        if not _isatty(self.err):
            return
        if total > self.conv.settings.chunk_size and done < total:
            self.err.write(f"\rpre-filling {done}/{total} tokens (Ctrl-C stops)")
            self._progress_shown = True
        elif self._progress_shown:
            self.err.write("\r\x1b[K")
            self._progress_shown = False
        self.err.flush()

    def write(self, text: str) -> None:
        """Reply text to stdout; if stdout fails, the reply stops (nobody reads it) and is saved as it is."""
        if self.terminal_out:
            text = _printable(text)
        if not self.out.write(text) and self._cancel is not None:
            self._cancel.set()

    # ---- the loop -----------------------------------------------------------------------------------------
    def loop(self) -> int:
        if self.interactive:
            c = self.conv
            what = (
                f"resumed {c.name!r} ({c.turns} turns, {len(c.ids)} tokens)"
                if self.resumed
                else (f"new conversation{f' {c.name!r}' if c.name else ''}")
            )
            self.status(f"mixchat · {self.rt.name} · {what} · /help for commands, Ctrl-D to quit")
        while True:
            STOP.check()  # a signal that arrived during a turn ends the session now that the turn is saved
            if self.out.failed:
                return self.output_failed()
            if self.error_status and not self.interactive:
                return self.exit_status()  # a script's next turns would fail the same way
            line = self.read_line()
            if line is None:
                if self.interactive:
                    self.status("")
                return self.exit_status()
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            if line.startswith("/") and not line.startswith("//"):
                with STOP.deferred():
                    if not self.command(line):
                        return self.exit_status()
                continue
            self.turn(line[1:] if line.startswith("//") else line)

    def exit_status(self) -> int:
        """0, or non-zero when a turn failed or could not be saved: scripts must notice a lost turn."""
        if self.unsaved is not None:
            if self.interactive:  # a script was told once, when the save failed; a person may have scrolled on
                self.status(f"mixchat: error: the last turn was not saved ({self.unsaved})")
            return 1
        return self.error_status

    def output_failed(self) -> int:
        """stdout failed during a turn, which is saved by now: one line (none for a broken pipe), and exit."""
        message = self.out.message()
        if message is not None:
            self.status(message + ("; the conversation was saved" if self.unsaved is None else ""))
        if self.out.stream is not None and self.out.stream is sys.stdout:
            silence_stdout()
        return self.exit_status() or self.out.exit_status()

    def turn(self, text: str, start: Callable[[threading.Event], Any] | None = None) -> None:
        """Send `text`, or run `start(cancel)` (a retry, an edit: raises before anything runs if it cannot)."""
        from mixchat.engine import PrefillProgressed, SequenceFinished, TokenGenerated

        cancel = threading.Event()
        events: queue.Queue[Any] = queue.Queue()
        before = len(self.conv.messages)
        run = start(cancel) if start is not None else self.conv.send(text, cancel)

        def work() -> None:
            try:
                for ev in run:
                    events.put(ev)
            except BaseException as e:
                events.put(_Failed(e))
            finally:
                events.put(_Done())

        worker = threading.Thread(target=work, name="mixchat-generate", daemon=True)
        reason: str | None = None
        failure: BaseException | None = None
        self._cancel = cancel
        with STOP.reply(cancel):
            try:
                worker.start()
                while True:
                    try:
                        try:
                            item = events.get(timeout=0.1)
                        except queue.Empty:
                            continue
                        if isinstance(item, _Done):
                            break
                        if isinstance(item, _Failed):
                            failure = item.error
                        elif isinstance(item, PrefillProgressed):
                            self.progress(item.done, item.total)
                        elif isinstance(item, TokenGenerated) and item.text:
                            self.progress(0, 0)
                            self.write(item.text)
                        elif isinstance(item, SequenceFinished):
                            reason = item.reason
                    except KeyboardInterrupt:
                        cancel.set()  # the worker stops after the current forward pass
            finally:
                cancel.set()  # however this loop ended, the worker must end before the process may
                if worker.is_alive() or worker.ident is not None:
                    worker.join()
                self._cancel = None
        with STOP.deferred():
            # (a retry or an edit undid a turn first: two messages fewer before its reply comes)
            self.finish_turn(len(self.conv.messages) > before - (2 if start is not None else 0), reason, failure)

    def finish_turn(self, replied: bool, reason: str | None, failure: BaseException | None) -> None:
        """Save first, then tell: the turn is on disk before anything else can fail."""
        from mixchat.cache import ContextFullError
        from mixchat.session import SettingsError

        self.progress(0, 0)
        if failure is not None and not isinstance(failure, (ContextFullError, SettingsError)):
            self.autosave()
            raise failure
        self.autosave()  # a reply cut short by the context limit or a signal is kept
        if replied:
            self.write("\n")  # every reply ends with exactly one newline, even an empty one
        if failure is not None:
            self.status(f"mixchat: error: {failure}")
            self.error_status = 2
            return
        if reason == "length":
            self.status(f"[reply stopped at {self.conv.settings.max_tokens} tokens]")
        elif reason == "cancelled":
            self.status("[cancelled]" if replied else "[cancelled before the reply; the turn was dropped]")

    def autosave(self) -> None:
        from mixchat.session import ConversationError

        if not self.conv.dirty:
            return
        try:
            folder = self.store.save(self.conv)
        except ConversationError as e:
            self.unsaved = str(e)
            self.status(f"mixchat: error: {e}; the turn is kept in memory only (/save NAME tries again)")
            return
        self.unsaved = None
        if self.conv.id not in self.announced:
            self.announced.add(self.conv.id)
            if not self.resumed or self.interactive:
                self.status(f"mixchat: saved conversation {self.conv.name!r} in {folder}")

    # ---- commands -------------------------------------------------------------------------------------------
    def command(self, line: str) -> bool:
        """Run an in-line command; False ends the session."""
        from mixchat.session import ConversationError

        name, _, rest = line[1:].partition(" ")
        rest = rest.strip()
        name = name.lower()
        try:
            if name in ("quit", "exit", "q"):
                return False
            if name in ("help", "h", "?"):
                self.status(HELP)
            elif name == "stats":
                self.status("\n".join(format_stats(self.conv.stats())))
            elif name == "save":
                self.save_as(rest or None)
            elif name == "new":
                self.new_conversation(self.conv.settings.system)
                self.status("new conversation")
            elif name == "system":
                self.system(rest)
            elif name in STEER_COMMANDS:
                STEER_COMMANDS[name](self, rest)
            else:
                self.status(f"unknown command /{name}; /help lists the commands")
        except ConversationError as e:
            self.status(f"mixchat: {e}")
        return True

    def save_as(self, name: str | None) -> None:
        from mixchat.session.files import clean_name

        if not self.conv.messages:
            if name is not None:
                self.conv.name = clean_name(name)
                self.status(f"this conversation will be saved as {self.conv.name!r} after its first turn")
            else:
                self.status("nothing to save yet")
            return
        folder = self.store.save(self.conv, name)
        self.unsaved = None
        self.announced.add(self.conv.id)
        self.status(f"saved {self.conv.name!r} in {folder}")

    def new_conversation(self, system: str | None) -> None:
        from mixchat.session import Conversation, ConversationError
        from mixchat.session.lock import acquire

        self.autosave()
        if self.unsaved is not None:
            raise ConversationError(f"the current conversation is not saved ({self.unsaved}); /save NAME first")
        old = self.conv
        settings = replace(old.settings, system=system)
        old.invalidate_cache()  # the buffer is reused (a second one would double the memory); `old` is saved
        self.conv = Conversation(
            self.rt.engine, self.rt.tokenizer, old.fingerprint, settings, model_name=old.model_name, cache=old.cache
        )
        self.lock.release()
        self.lock = acquire(self.store.root, self.conv.id, "new conversation")
        self.resumed = False

    def system(self, text: str) -> None:
        if not text:
            current = self.conv.settings.system
            self.status(f"system prompt: {current}" if current else "no system prompt (set one with /system TEXT)")
            return
        new = None if text == "-" else text
        if not self.conv.messages:
            self.conv.set_system(new)
            self.status("system prompt set" if new else "system prompt cleared")
            return
        old_name = self.conv.name
        self.new_conversation(new)
        self.status(f"started a new conversation with this system prompt; {old_name!r} stays saved")


def _steer(action: str) -> Callable[[PlainRepl, str], None]:
    def command(repl: PlainRepl, rest: str) -> None:
        from mixchat.cli import steer_commands

        fn = getattr(steer_commands, action)
        fn(repl, rest) if action in ("fork", "copy") else fn(repl)

    return command


STEER_COMMANDS = {name: _steer(name) for name in ("retry", "undo", "edit", "fork", "copy")}


def format_stats(s: Any) -> list[str]:
    """Conversation.stats() as a few lines of text."""
    lines = [
        f"conversation: {s.turns} turns, {s.tokens} tokens; cache has seen {s.cached} ({s.tokens - s.cached} pending)"
    ]
    kind = "window" if s.window is not None else "context"
    lines.append(
        f"{kind}: {s.live}/{s.capacity} slots ({100 * s.fill:.0f}% full), wrapped {s.wraps} times, "
        f"cache {human_bytes(s.cache_bytes)}"
    )
    if getattr(s, "smallest_capacity", None) is not None:
        lines.append(f"smallest layer window: {min(s.cached, s.smallest_capacity)}/{s.smallest_capacity} slots")
    if s.last is not None:
        last = s.last
        lines.append(
            f"last reply: {last.reply_tokens} tokens ({last.finish_reason}), {last.decode_tps:.1f} tok/s; "
            f"pre-filled {last.prompt_tokens} tokens in {last.prefill_seconds:.2f} s"
        )
    lines.append(f"this session: pre-filled {s.prefilled_tokens} tokens, decoded {s.decoded_tokens}")
    if s.expert_usage is not None and s.last is not None:
        n = len(s.last.routing)
        lines.append(
            f"experts chosen for the last reply's {n} tokens (top-{s.experts_per_token}), expert:count per layer:"
        )
        for layer, counts in enumerate(s.expert_usage):
            lines.append(f"  L{layer:<3}" + " ".join(f"{e}:{c}" for e, c in enumerate(counts)))
    return lines


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _printable(text: str) -> str:
    """Model output on a terminal: control characters (escape sequences!) shown as U+FFFD, not obeyed."""
    return "".join(ch if ch in "\n\t" or unicodedata.category(ch) != "Cc" else "\ufffd" for ch in text)
