"""Pieces shared by the subcommands: model options, one-line errors, progress on stderr."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from mixchat.engine import DEFAULT_CHUNK_SIZE
from mixchat.quant.format import DEFAULT_GROUP_SIZE, FORMATS, GROUP_SIZES, QuantSpec, spec_from_options
from mixchat.runtime import Runtime, UserError, load_runtime
from mixchat.tokenizer import TEMPLATES


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (and exit status 2), as for every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_model_options(p: argparse.ArgumentParser, chunk: bool = True) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        metavar="DIR",
        help="model folder (Mistral-native or Hugging Face layout, safetensors); default: the built-in model",
    )
    add_loading_options(g)
    if chunk:
        g.add_argument(
            "--chunk-size",
            type=positive_int,
            default=DEFAULT_CHUNK_SIZE,
            metavar="N",
            help=f"pre-fill at most N tokens per sequence per forward pass (default {DEFAULT_CHUNK_SIZE})",
        )


def add_loading_options(g: argparse._ArgumentGroup) -> None:
    """How a model is loaded: device, dtype, template, context bound, quantization (every command, the app)."""
    g.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="where to run (default: cuda if available, else cpu)",
    )
    g.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="weight dtype (default: bfloat16 on cuda; on cpu the checkpoint's bfloat16 where the "
        "CPU computes it, else float32)",
    )
    add_template_option(g)
    g.add_argument(
        "--max-context",
        type=positive_int,
        metavar="N",
        help="context limit for models without a sliding window (default 32768)",
    )
    add_quant_options(g)


def add_template_option(g: argparse._ArgumentGroup | argparse.ArgumentParser) -> None:
    g.add_argument(
        "--template",
        choices=list(TEMPLATES),
        metavar="VERSION",
        help=f"chat template to use instead of the one the tokenizer files imply ({', '.join(TEMPLATES)})",
    )


def add_quant_options(g: argparse._ArgumentGroup | argparse.ArgumentParser) -> None:
    """--quant and --group-size: how the weights are held (docs/QUANTIZATION.md)."""
    g.add_argument(
        "--quant",
        choices=FORMATS,
        metavar="{" + ",".join(FORMATS) + "}",
        help="weight-only quantization: int8 (per channel) or int4 (groups); default: as stored "
        "(a full-precision checkpoint is quantized while loading)",
    )
    g.add_argument(
        "--group-size",
        type=int,
        metavar="G",
        help=f"int4 group size, one of {', '.join(map(str, GROUP_SIZES))} (default {DEFAULT_GROUP_SIZE}; "
        "smaller where a dimension needs it)",
    )


def quant_from_args(args: argparse.Namespace) -> QuantSpec | None:
    """The requested quantization (None: load as stored); a bad combination is one line."""
    return spec_from_options(getattr(args, "quant", None), getattr(args, "group_size", None))


def add_sampling_options(p: argparse.ArgumentParser, temperature: float = 0.7, max_tokens: int = 256) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument(
        "--temperature",
        type=non_negative_float,
        default=temperature,
        metavar="T",
        help=f"0 = greedy (default {temperature})",
    )
    g.add_argument("--top-p", type=unit_float, default=0.95, metavar="P", help="nucleus sampling mass (default 0.95)")
    g.add_argument(
        "--max-tokens",
        type=positive_int,
        default=max_tokens,
        metavar="N",
        help=f"stop a reply after N tokens (default {max_tokens})",
    )
    g.add_argument("--seed", type=seed_int, metavar="S", help="random seed for reproducible sampling")


def add_conversation_options(g: argparse._ArgumentGroup) -> None:
    """Generation flags of a conversation (REPL and app). Their defaults are None so that a resumed
    conversation keeps its saved settings unless a flag overrides them; the help shows the fallbacks."""
    from mixchat.session.settings import ChatSettings

    d = ChatSettings()  # the fallbacks the help names are the settings' own defaults
    g.add_argument("--temperature", type=non_negative_float, metavar="T", help=f"0 = greedy (default {d.temperature})")
    g.add_argument("--top-p", type=unit_float, metavar="P", help=f"nucleus sampling mass (default {d.top_p})")
    g.add_argument(
        "--max-tokens", type=positive_int, metavar="N", help=f"stop a reply after N tokens (default {d.max_tokens})"
    )
    g.add_argument("--seed", type=seed_int, metavar="S", help="random seed (turn n samples with S + n)")
    g.add_argument(
        "--chunk-size",
        type=positive_int,
        metavar="N",
        help=f"pre-fill at most N tokens per forward pass (default {d.chunk_size})",
    )
    g.add_argument(
        "--experts-per-token",
        type=positive_int,
        metavar="K",
        help="MoE models: route each token to K experts (default: the model's own, 2 for Mixtral)",
    )


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def seed_int(text: str) -> int:
    from mixchat.sampling import MAX_SEED

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"a seed is between 0 and {MAX_SEED} (2^63 - 1), got {text}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def unit_float(text: str) -> float:
    value = non_negative_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


@contextmanager
def stderr_status(message: str, quiet: bool = False) -> Iterator[None]:
    """A spinner on stderr while slow work runs, only when stderr is a terminal (scripts stay clean)."""
    if quiet or not sys.stderr.isatty():
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status(message):
        yield


def load_from_args(args: argparse.Namespace, quiet: bool = False) -> Runtime:
    """Load the model; a stop signal meanwhile ends the command between two tensors (see cli.signals)."""
    from mixchat import loader
    from mixchat.cli.signals import STOP

    loader.between_tensors = STOP.check
    try:
        with stderr_status("Loading model…", quiet):
            rt = load_runtime(
                args.model,
                device=args.device,
                dtype=args.dtype,
                chunk_size=getattr(args, "chunk_size", DEFAULT_CHUNK_SIZE),
                max_context=args.max_context,
                template=getattr(args, "template", None),
                quant=quant_from_args(args),
            )
    finally:
        loader.between_tensors = None
    STOP.check()
    return rt


def fail(message: str) -> None:
    raise UserError(message)
