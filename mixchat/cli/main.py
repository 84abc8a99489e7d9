"""The `mixchat` command: subcommand dispatch and the single place where errors become one line."""

from __future__ import annotations

import argparse
import os
import sys

from mixchat import __version__
from mixchat.cli.common import Parser

DESCRIPTION = """\
mixchat runs Mistral and Mixtral models in PyTorch and shows how they work while they talk: which two of
eight experts each token was routed to, layer by layer, and how full the rolling attention cache is.
With no subcommand it opens the chat app (the TUI) on the built-in model, or on --model DIR."""


def build_parser() -> Parser:
    from mixchat.cli import generate, info

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
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
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

        return run_pipelined(func, args, run_guarded)
    return run_guarded(func, args)


def run_guarded(func, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    """Run a subcommand; known failures print one line on stderr instead of a traceback."""
    from mixchat.errors import UserError

    try:
        return int(func(args) or 0)
    except UserError as e:
        print(f"mixchat: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mixchat: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except MemoryError:
        print("mixchat: error: out of memory (try a smaller --max-context or --dtype bfloat16)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
