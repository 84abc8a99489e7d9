"""Save an SVG screenshot of the chat app mid-conversation, drawn by the app itself (for the README).

Runs the real app headless on a model, sends a few messages, and saves Textual's own SVG export:

    python scripts/tui_screenshot.py [--model DIR] [--out docs/screenshot.svg] [--size 132x40]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

MESSAGES = ["Hi! How are you today?", "What do you like to do on weekends?"]


async def shoot(args: argparse.Namespace) -> None:
    from mixchat.runtime import load_runtime
    from mixchat.tui.app import MixchatApp
    from mixchat.tui.headless import open_chat, send_and_wait

    rt = load_runtime(args.model, device="cpu")
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        app = MixchatApp(
            runtime=rt,
            data_dir=Path(tmp) / "data",
            config=Path(tmp) / "config",
            theme=args.theme,
            conversation="weekend chat",
            overrides={"temperature": args.temperature, "seed": args.seed, "max_tokens": 80},
        )
        async with app.run_test(size=(width, height)) as pilot:
            chat = await open_chat(pilot)
            for text in args.message or MESSAGES:
                await send_and_wait(pilot, chat, text)
            await pilot.pause(0.3)
            if args.colour:
                await pilot.press("ctrl+g")
                await pilot.pause(0.1)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(app.export_screenshot(title="mixchat"), encoding="utf-8")
    print(f"saved {args.out}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model folder (default: the built-in model)")
    p.add_argument("--out", type=Path, default=Path("docs/screenshot.svg"))
    p.add_argument("--size", default="132x40", help="terminal size WxH (default 132x40)")
    p.add_argument("--theme", default="mixchat-dark")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--colour", action="store_true", help="colour the transcript by expert")
    p.add_argument("--message", action="append", help="a message to send (repeatable; default: two examples)")
    asyncio.run(shoot(p.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
