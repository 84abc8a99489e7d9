"""`mixchat conversations`: list, show, export, rename and delete saved conversations (no model needed)."""

from __future__ import annotations

import argparse
import sys

from mixchat.cli.common import Parser
from mixchat.errors import UserError
from mixchat.units import local_time

DESCRIPTION = """\
Manage the conversations that `mixchat chat` saves after every turn. They live in one folder each under
the data dir: --data-dir, else $MIXCHAT_DATA_DIR, else the platform's user data folder."""

EPILOG = """\
examples:
  mixchat conversations list
  mixchat conversations show "trip plans"
  mixchat conversations export "trip plans" --format md > trip.md
  mixchat conversations search lisbon          # every conversation that mentions it (exit 1: none)
  mixchat conversations rename "trip plans" "Lisbon trip"
  mixchat conversations delete "Lisbon trip"
  mixchat conversations repair "Lisbon trip"   # rebuild a damaged transcript (the original is kept)"""


def add_data_dir_option(p: argparse.ArgumentParser, suppress: bool = False) -> None:
    """--data-dir; on subcommands the default is suppressed so a value given before them is kept."""
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        default=argparse.SUPPRESS if suppress else None,
        help="where conversations are kept (default: $MIXCHAT_DATA_DIR, else the user data folder)",
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "conversations",
        help="list, show, search, export, rename, delete or repair saved conversations",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_data_dir_option(p)
    actions = p.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser)
    a = actions.add_parser("list", help="all conversations, most recent first (the default)")
    add_data_dir_option(a, suppress=True)
    a = actions.add_parser("show", help="print a conversation: settings, model, messages")
    a.add_argument("name", metavar="NAME")
    add_data_dir_option(a, suppress=True)
    a = actions.add_parser("export", help="print a conversation as Markdown or JSON")
    a.add_argument("name", metavar="NAME")
    a.add_argument("--format", choices=["md", "json"], default="md", help="output format (default md)")
    add_data_dir_option(a, suppress=True)
    a = actions.add_parser("search", help="find TEXT (any case) in the names and messages of all conversations")
    a.add_argument("text", metavar="TEXT")
    add_data_dir_option(a, suppress=True)
    a = actions.add_parser("rename", help="give a conversation a new name")
    a.add_argument("old", metavar="OLD")
    a.add_argument("new", metavar="NEW")
    add_data_dir_option(a, suppress=True)
    a = actions.add_parser("delete", help="delete a conversation and its saved cache")
    a.add_argument("name", metavar="NAME")
    add_data_dir_option(a, suppress=True)
    a = actions.add_parser(
        "repair", help="rebuild what can be rebuilt of a damaged transcript (the original is kept beside it)"
    )
    a.add_argument("name", metavar="NAME")
    add_data_dir_option(a, suppress=True)
    p.set_defaults(func=run, action=None)


def run(args: argparse.Namespace) -> int:
    from mixchat.session.store import ConversationStore

    store = ConversationStore(args.data_dir)
    action = args.action or "list"
    if sys.stdout is None and action in ("list", "show", "export"):
        raise UserError(f"stdout is closed: there is nowhere to print what `conversations {action}` shows")
    if action == "list":
        return _list(store)
    if action == "show":
        return _show(store, args.name)
    if action == "export":
        sys.stdout.write(store.export(args.name, args.format))
        return 0
    if action == "search":
        return _search(store, args.text)
    if action == "rename":
        new = store.rename(args.old, args.new)
        print(f"renamed {args.old!r} to {new!r}", file=sys.stderr)
        return 0
    if action == "delete":
        store.delete(args.name)
        print(f"deleted {args.name!r}", file=sys.stderr)
        return 0
    if action == "repair":
        from mixchat.session.repair import repair

        changes = repair(store.root, store.folder(args.name))
        print(f"{args.name!r}: " + ("; ".join(changes) if changes else "nothing needed repair"), file=sys.stderr)
        return 0
    raise AssertionError(action)


def _list(store) -> int:  # type: ignore[no-untyped-def]
    infos = store.list()
    if not infos:
        print(f"no conversations in {store.root}", file=sys.stderr)
        return 0
    width = min(40, max(4, *(len(i.name) for i in infos)))
    print(f"{'NAME':<{width}}  {'TURNS':>5}  {'TOKENS':>7}  {'UPDATED':<16}  MODEL")
    for i in infos:
        if i.error is not None:
            print(f"{i.name:<{width}}  (unreadable: {i.error})")
        else:
            print(f"{i.name:<{width}}  {i.turns:>5}  {i.tokens:>7}  {local_time(i.updated):<16}  {i.model_name}")
    return 0


def _search(store, text: str) -> int:  # type: ignore[no-untyped-def]
    from mixchat.session.search import search

    hits = search(store, text)
    if not hits:
        print(f"no conversation in {store.root} mentions {text!r}", file=sys.stderr)
        return 1
    who = {"user": "you", "assistant": "assistant", "system": "system", "name": "name"}
    name = None
    for h in hits:
        if h.name != name:
            name = h.name
            print(name)
        print(f"  {who[h.role]}> {h.snippet}")
    return 0


def _show(store, name: str) -> int:  # type: ignore[no-untyped-def]
    t = store.read(name)
    s = t.settings
    folder = store.folder(name)
    cache = f"{t.cache.seen} tokens seen, {t.cache.live} live ({t.cache.dtype})" if t.cache else "none saved"
    seed = s.seed if s.seed is not None else "random"
    experts = s.experts_per_token if s.experts_per_token is not None else "model default"
    lines = [
        f"name:      {t.name}",
        f"folder:    {folder}",
        f"model:     {t.model_name or 'unknown'}",
        f"created:   {local_time(t.created)}    updated: {local_time(t.updated)}",
        f"turns:     {t.turns}    tokens: {len(t.ids)}    cache: {cache}",
        f"settings:  temperature {s.temperature:g}, top-p {s.top_p:g}, max tokens {s.max_tokens}, seed {seed}, "
        f"chunk {s.chunk_size}, experts per token {experts}",
    ]
    if s.system:
        lines.append(f"system:    {s.system}")
    lines.append("")
    for m in t.messages:
        who = "you" if m.role == "user" else "assistant"
        note = f"  [{m.finish_reason}]" if m.role == "assistant" and m.finish_reason in ("length", "cancelled") else ""
        lines.append(f"{who}> {m.content}{note}")
    print("\n".join(lines))
    return 0
