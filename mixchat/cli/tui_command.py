"""`mixchat` with no command: the chat app (TUI). Also what `mixchat chat` runs without --plain.

Textual is imported only when the app actually starts (inside `run`), so `mixchat generate`, `info` and
the plain REPL never load it.
"""

from __future__ import annotations

import argparse
import sys

from mixchat.cli.common import (
    add_conversation_options,
    add_loading_options,
    quant_from_args,
)
from mixchat.runtime import UserError

_OVERRIDES = ("temperature", "top_p", "max_tokens", "seed", "chunk_size", "experts_per_token")


def add_options(parser: argparse.ArgumentParser) -> None:
    """Options of the chat app, on the top-level parser (they apply when no command is given)."""
    g = parser.add_argument_group("chat app (when no command is given)")
    g.add_argument("--model", metavar="DIR", help="model folder (default: the built-in model)")
    add_loading_options(g)
    which = g.add_mutually_exclusive_group()
    which.add_argument(
        "--resume",
        nargs="?",
        const="",
        metavar="NAME",
        help="open NAME with its saved cache, or without NAME the most recent conversation",
    )
    which.add_argument("--conversation", metavar="NAME", help="open NAME if it exists, else start it under NAME")
    g.add_argument("--system", metavar="TEXT", help="system prompt of a new conversation")
    g.add_argument("--theme", metavar="NAME", help="colour theme (remembered; see themes/ and the settings screen)")
    g.add_argument(
        "--data-dir",
        metavar="DIR",
        help="where conversations are kept (default: $MIXCHAT_DATA_DIR, else the user data folder)",
    )
    g.add_argument(
        "--config-dir",
        metavar="DIR",
        help="preferences and user themes (default: $MIXCHAT_CONFIG_DIR, else the user config folder)",
    )
    g.add_argument("--no-panel", action="store_true", help="start with the routing panel hidden (Ctrl+R shows it)")
    add_conversation_options(g)
    parser.set_defaults(tui_func=run)


def run(args: argparse.Namespace) -> int:
    """Start the app. Problems found before the screen opens (no terminal, no model, unknown theme, nothing
    to resume) and a model that fails to load end with one line on stderr and exit status 2."""
    from mixchat.loader import inspect_folder, quant_spec
    from mixchat.runtime import resolve_model_path
    from mixchat.session import ConversationStore
    from mixchat.session.files import clean_name

    model = getattr(args, "model", None)
    quant = quant_from_args(args)
    ckpt = inspect_folder(resolve_model_path(model), max_context=getattr(args, "max_context", None))  # fail fast
    quant_spec(ckpt, quant)  # a --quant the checkpoint cannot be loaded in fails here too

    store = ConversationStore(getattr(args, "data_dir", None))
    resume = getattr(args, "resume", None)
    if resume is not None:
        target = resume or store.latest()
        if target is None:
            raise UserError(f"no saved conversation to resume in {store.root}")
        store.read(target)  # an unreadable transcript fails here, before the model loads
        resume = target
    conversation = getattr(args, "conversation", None)
    if conversation is not None:
        conversation = clean_name(conversation)
    overrides = {k: getattr(args, k) for k in _OVERRIDES if getattr(args, k, None) is not None}

    from mixchat.tui.app import MixchatApp  # textual is imported here, and only here

    app = MixchatApp(
        model,
        device=getattr(args, "device", "auto"),
        dtype=getattr(args, "dtype", "auto"),
        max_context=getattr(args, "max_context", None),
        data_dir=getattr(args, "data_dir", None),
        config=getattr(args, "config_dir", None),
        resume=resume,
        conversation=conversation,
        system=getattr(args, "system", None),
        overrides=overrides,
        theme=getattr(args, "theme", None),
        panel=False if getattr(args, "no_panel", False) else None,
        template=getattr(args, "template", None),
        quant=quant,
    )
    theme = getattr(args, "theme", None)
    if theme is not None and theme not in app.available_themes:
        names = ", ".join(sorted(app.available_themes))
        raise UserError(f"unknown theme {theme!r}; available: {names}")
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UserError("the chat app needs a terminal; for pipes and scripts use `mixchat chat --plain`")
    from mixchat.cli.signals import STOP

    STOP.check()  # a signal during start-up ends it here
    STOP.uninstall()  # the app reads Ctrl-C as a key, and Textual has its own handling of the others
    app.run()
    if app.load_error is not None:
        print(f"mixchat: error: {app.load_error}", file=sys.stderr)
        return 2
    return int(app.return_code or 0)
