"""Measure what the routing panel costs: decode tokens/s of the TUI with the panel on vs off.

Runs the real app headless (`App.run_test`) on a model, sends the same prompt with the same seed in a
fresh conversation for each run (ignoring end-of-sequence), so every run decodes the same tokens, and
reads the decode speed that the worker measures (wall clock from the first to the last token, so any time
the UI thread takes from the model, GIL included, shows up). Runs alternate on/off to cancel drift, and
medians are reported.

    python scripts/panel_overhead.py --model DIR [--tokens 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

PROMPT = "Tell me a long story about a lighthouse keeper, a storm and a ship."


async def one_run(rt: Any, panel: bool, args: argparse.Namespace, data: Path) -> tuple[float, int]:
    from mixchat.tui.app import MixchatApp
    from mixchat.tui.headless import open_chat, send_and_wait

    overrides = {"temperature": args.temperature, "max_tokens": args.tokens, "seed": 1234}
    app = MixchatApp(
        runtime=rt,
        data_dir=data,
        config=data / "config",
        panel=panel,
        overrides=overrides,
        stream_interval=args.interval,
    )
    async with app.run_test(size=(args.width, args.height)) as pilot:
        chat = await open_chat(pilot)
        await send_and_wait(pilot, chat, args.prompt)
        finish = chat.last_finish
        assert finish is not None and finish.error is None, finish and finish.error
        tokens = chat.conversation.messages[-1].tokens or 0
        return finish.tokens_per_second or 0.0, tokens


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model folder (default: the built-in model)")
    p.add_argument("--device", default="auto")
    p.add_argument("--tokens", type=int, default=256, help="max tokens per reply (default 256)")
    p.add_argument("--repeats", type=int, default=5, help="runs per mode (default 5)")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--prompt", default=PROMPT)
    p.add_argument(
        "--stop-at-eos",
        action="store_true",
        help="let replies end at the end-of-sequence token (default: decode exactly --tokens tokens)",
    )
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--interval", type=float, help="seconds between UI updates while streaming (default: the app's)")
    p.add_argument("--width", type=int, default=160)
    p.add_argument("--height", type=int, default=48)
    args = p.parse_args()

    from mixchat.runtime import load_runtime

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    rt = load_runtime(args.model, device=args.device)
    if not args.stop_at_eos:
        rt.engine.eos_id = -1  # a small model's replies are short; same length every run measures better
    print(
        f"model {rt.name}: {rt.model.args.n_layers} layers, dim {rt.model.args.dim}, "
        f"{rt.model.args.moe.num_experts if rt.model.args.moe else 0} experts, on {rt.model.device}"
    )
    results: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(one_run(rt, True, argparse.Namespace(**{**vars(args), "tokens": 8}), Path(tmp) / "warm"))
        for r in range(args.repeats):
            for panel in (True, False) if r % 2 == 0 else (False, True):
                tps, n = asyncio.run(one_run(rt, panel, args, Path(tmp) / f"{r}-{panel}"))
                results[panel].append(tps)
                print(f"run {r + 1} panel {'on ' if panel else 'off'}: {tps:7.1f} tok/s ({n} tokens)", flush=True)
    on, off = statistics.median(results[True]), statistics.median(results[False])
    # Each repeat ran on and off back to back: their ratio is less affected by a machine that is busier in
    # one minute than the next (other processes, other virtual machines on the host).
    paired = statistics.median(a / b for a, b in zip(results[True], results[False], strict=True))
    print(f"median decode speed: panel on {on:.1f} tok/s, panel off {off:.1f} tok/s, ratio on/off {on / off:.3f}")
    print(f"median of the per-repeat ratios on/off: {paired:.3f}")
    return 0 if on >= 0.9 * off else 1


if __name__ == "__main__":
    sys.exit(main())
