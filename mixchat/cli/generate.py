"""`mixchat generate`: prompts in, text (or JSON with ids and routing) out; prompts run packed."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from mixchat.cli.common import add_model_options, add_sampling_options, load_from_args
from mixchat.cli.signals import STOP, Stopped
from mixchat.runtime import UserError

DESCRIPTION = """\
Complete one or more prompts without a conversation. Several prompts are packed into one batch and run
together (each keeps its own cache row). Without --chat a prompt is continued as plain text after BOS;
with --chat it becomes a one-turn conversation in the model's chat template."""

EPILOG = """\
examples:
  mixchat generate --chat --prompt "Hi! How are you today?" --temperature 0
  mixchat generate --model ./Mistral-7B --prompt "The capital of France is" --max-tokens 20
  mixchat generate --prompts-file prompts.txt --json > out.jsonl"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="complete prompts non-interactively",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--prompt", action="append", default=[], metavar="TEXT", help="a prompt (repeat for several)")
    p.add_argument("--prompts-file", metavar="FILE", help="one prompt per line ('-' reads stdin)")
    p.add_argument("--chat", action="store_true", help="wrap each prompt as a user turn in the chat template")
    p.add_argument("--system", metavar="TEXT", help="system prompt (with --chat)")
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per prompt: prompt_ids, ids, text, routing, finish_reason, stats",
    )
    add_sampling_options(p)
    add_model_options(p)
    p.set_defaults(func=run)


def read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt)
    if args.prompts_file:
        if args.prompts_file == "-":
            text = read_stdin_text()
        else:
            path = Path(args.prompts_file)
            if not path.is_file():
                raise UserError(f"prompts file not found: {path}")
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise UserError(f"prompts file is not UTF-8 text: {path}") from None
        prompts.extend(line for line in text.splitlines() if line.strip())
    if not prompts:
        raise UserError("no prompt given: use --prompt TEXT or --prompts-file FILE")
    if args.system and not args.chat:
        raise UserError("--system only applies with --chat")
    return prompts


def read_stdin_text() -> str:
    """All of stdin as UTF-8 text; closed or binary stdin is one line, not a traceback deep in the tokenizer."""
    stream = sys.stdin
    if stream is None:
        raise UserError("--prompts-file -: stdin is closed")
    data = stream.buffer.read() if hasattr(stream, "buffer") else stream.read().encode("utf-8", "surrogateescape")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"--prompts-file -: stdin is not UTF-8 text (byte {e.start} is {data[e.start]:#04x})") from None
    if "\0" in text:
        raise UserError(f"--prompts-file -: stdin holds a NUL character (byte {text.index(chr(0))}); it is not text")
    return text


def run(args: argparse.Namespace) -> int:
    from mixchat.chat_template import Message, encode_chat
    from mixchat.engine import SequenceFinished, TokenGenerated
    from mixchat.sampling import SamplingSettings

    if sys.stdout is None:
        raise UserError("stdout is closed: there is nowhere to print the replies")
    prompts = read_prompts(args)
    settings = SamplingSettings(args.temperature, args.top_p, args.max_tokens, args.seed)
    rt = load_from_args(args)
    tok = rt.tokenizer
    if args.chat:
        head = [Message("system", args.system)] if args.system else []
        prompt_ids = [encode_chat(tok, [*head, Message("user", p)]) for p in prompts]
    else:
        prompt_ids = [tok.encode(p, bos=True) for p in prompts]

    stream = not args.json and len(prompts) == 1
    results: dict[int, SequenceFinished] = {}
    routing: list[list] = [[] for _ in prompts]
    cancel = threading.Event()  # a signal stops generation at the next step (see mixchat.cli.signals)
    with STOP.reply(cancel):
        for ev in rt.engine.generate(prompt_ids, settings, trace=args.json, cancel=cancel):
            if isinstance(ev, TokenGenerated):
                if ev.routing is not None:
                    routing[ev.seq].append(ev.routing.to_json())
                if stream and ev.text:
                    sys.stdout.write(ev.text)
                    sys.stdout.flush()
            elif isinstance(ev, SequenceFinished):
                results[ev.seq] = ev
        stopped = STOP.requested or (signal.SIGINT if STOP.stopped_reply else None)
    if stream:
        sys.stdout.write("\n")
    else:
        print_results(args, prompts, prompt_ids, results, routing, rt)
    if stopped is not None:
        raise Stopped(stopped)  # nothing to save here: what was generated is printed, and the exit says why
    return 0


def print_results(args, prompts, prompt_ids, results, routing, rt) -> None:  # type: ignore[no-untyped-def]
    """The finished sequences (cancelled ones too), as text blocks or JSON lines."""
    tok = rt.tokenizer
    for i, prompt in enumerate(prompts):
        fin = results[i]
        text_ids = [t for t in fin.ids if t != tok.eos_id]
        if args.json:
            record = {
                "prompt": prompt,
                "prompt_ids": prompt_ids[i],
                "ids": fin.ids,
                "text": tok.decode(text_ids),
                "finish_reason": fin.reason,
                "routing": routing[i] if rt.model.args.moe else [],
                "stats": {
                    "prompt_tokens": fin.stats.prompt_tokens,
                    "generated_tokens": len(fin.ids),
                    "prefill_seconds": round(fin.stats.prefill_seconds, 4),
                    "first_token_seconds": round(fin.stats.first_token_seconds, 4),
                    "decode_tokens_per_second": round(fin.stats.decode_tps, 2),
                    "batch": len(prompts),
                },
            }
            print(json.dumps(record, ensure_ascii=False))
        else:
            print(f"--- [{i + 1}] {prompt}")
            print(tok.decode(text_ids))
