"""The `mixchat` command: subcommand dispatch and the single place where errors become one line."""

from __future__ import annotations

import argparse
import os
import sys

from mixchat import __version__
from mixchat.cli.output import EXIT_BROKEN_PIPE, flush_or_silence_stdout, say, silence_stdout
from mixchat.cli.signals import STOP, Stopped

DESCRIPTION = """\
mixchat runs Mistral and Mixtral models in PyTorch and shows how they work while they talk: which two of
eight experts each token was routed to, layer by layer, and how full the rolling attention cache is.
With no subcommand it opens the chat app (the TUI) on the built-in model, or on --model DIR."""


def build_parser():  # type: ignore[no-untyped-def]  # -> Parser (imported here: it imports torch)
    from mixchat.cli import generate, info
    from mixchat.cli.common import Parser

    parser = Parser(prog="mixchat", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"mixchat {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    generate.register(sub)
    info.register(sub)
    for name in ("chat", "conversations", "bench", "train", "quantize"):
        try:
            module = __import__(f"mixchat.cli.{name}", fromlist=["register"])
        except ImportError:
            continue
        module.register(sub)
    try:
        from mixchat.cli import tui_command

        tui_command.add_options(parser)
    except ImportError:
        pass
    return parser


def main(argv: list[str] | None = None) -> int:
    # First of all, before torch is imported: a signal at start-up ends the command quietly (see signals).
    STOP.install()
    reserve_standard_fds()
    try:
        return _main(argv)
    except Stopped as e:
        say(e.message)
        return e.status


def reserve_standard_fds() -> None:
    """Started with stdin, stdout or stderr closed (`<&-`), the next file opened would get that number and
    be mistaken for it (a lock file written to as stdout). /dev/null holds the place; sys.stdin/stdout stay
    None, which the commands report."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            try:
                os.open(os.devnull, os.O_RDWR)  # takes the lowest free number: this one
            except OSError:
                return


def _main(argv: list[str] | None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()  # imports torch: a signal meanwhile is acted on just below
    args = parser.parse_args(argv)
    STOP.check()
    func = getattr(args, "func", None)
    if func is None:
        func = getattr(args, "tui_func", None)
    from mixchat import distributed

    if func is None:
        if os.environ.get("RANK", "0") == "0":
            parser.print_help()
        return 0
    if distributed.launched():  # one rank of `torchrun --nproc-per-node N -m mixchat ...`
        from mixchat.distributed.launch import run_pipelined

        STOP.uninstall()  # the pipeline's own lifecycle handles signals there

        return run_pipelined(func, args, run_guarded)
    return run_guarded(func, args)


def run_guarded(func, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    """Run a subcommand; known failures print one line on stderr instead of a traceback."""
    from mixchat.errors import UserError

    try:
        status = int(func(args) or 0)
        if sys.stdout is not None:
            sys.stdout.flush()  # buffered output that fails now (a full disk) is still one line
        return status
    except UserError as e:
        say(f"mixchat: error: {e}")
        return 2
    except Stopped as e:
        say(e.message)
        return e.status
    except KeyboardInterrupt:
        say("mixchat: interrupted")
        return 130
    except BrokenPipeError:
        silence_stdout()  # the reader went away: end quietly, as other Unix tools do
        return EXIT_BROKEN_PIPE
    except MemoryError:
        say("mixchat: error: out of memory (try a smaller --max-context or --dtype bfloat16)")
        return 1
    except OSError as e:  # a file system or stream failure no command turned into a sentence of its own
        flush_or_silence_stdout()
        where = f" ({e.filename})" if e.filename else ""
        say(f"mixchat: error: {e.strerror or e}{where}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
