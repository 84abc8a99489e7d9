"""`mixchat bench`: time to first token, pre-fill and decode speed, memory; optionally against transformers."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass

import torch

from mixchat.checkpoint_config import hf_config
from mixchat.cli.common import add_model_options, positive_int, quant_from_args
from mixchat.exec.memory import peak_memory_bytes
from mixchat.quant.format import bytes_per_weight
from mixchat.quant.modules import weight_bytes
from mixchat.runtime import UserError, current_pipeline, resolve_device, resolve_dtype
from mixchat.shapes import SHAPES

H200_COPY_BANDWIDTH = 4.26e12  # bytes/s, measured device-to-device copy on the project's H200

DESCRIPTION = """\
Measure mixchat on a model: time to first token for a prompt, pre-fill tokens/s, decode tokens/s (median
and spread over repeats) and peak memory. --batch N packs N prompts into one pass. With --compare
transformers the same weights also run through transformers' generate (with its KV cache) in the same
process, and the ratios are reported. Speeds on a shared machine are noisy: read the ratios."""

EPILOG = """\
examples:
  mixchat bench                                         # the built-in model, on this machine
  mixchat bench --compare transformers --json           # ratios against transformers, same weights
  mixchat bench --shape mixtral-8x7b --device cuda --dtype bfloat16 --batch 8
  mixchat bench --shape mistral-7b --device cpu --quant int4 --prompt-tokens 32 --new-tokens 16
  torchrun --nproc-per-node 2 -m mixchat bench --shape mixtral-8x7b --device cuda --batch 8 --micro-batches 2"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="measure time to first token, pre-fill and decode speed",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--shape",
        metavar="NAME",
        help=f"random weights of a named shape: {', '.join(SHAPES)} "
        "(with --quant, drawn layer by layer already quantized)",
    )
    p.add_argument("--batch", type=positive_int, default=1, help="sequences packed per pass (default 1)")
    p.add_argument("--prompt-tokens", type=positive_int, default=1000, help="prompt length (default 1000)")
    p.add_argument("--new-tokens", type=positive_int, default=64, help="decode steps (default 64)")
    p.add_argument(
        "--repeats",
        type=positive_int,
        default=5,
        help="timed repeats after a warm-up; medians are reported (default 5)",
    )
    p.add_argument("--compare", choices=["transformers"], help="also run the same weights through transformers")
    p.add_argument(
        "--window-check",
        action="store_true",
        help="pre-fill 20 windows of tokens and print the cache size along the way",
    )
    p.add_argument(
        "--micro-batches",
        type=positive_int,
        default=1,
        metavar="M",
        help="under torchrun: split the batch into M micro-batches that go through the pipeline "
        "stages at the same time; in decode each micro-batch then runs its own steps, so one stage "
        "works on a micro-batch while the next stage works on another (default 1)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    add_model_options(p)
    p.set_defaults(func=run)


@dataclass
class Timing:
    ttft: list[float]
    decode_tps: list[float]
    first_step: list[float] | None = None  # first decode step on a new cache (includes graph capture)
    dropped: int = 0  # rounds whose decode could not be timed (no step measured): left out of the rates


def _timing(rounds: list[tuple[float, float, float | None]], steps: bool = True) -> Timing:
    """Rounds of (ttft, first step or 0, decode tokens/s or None) -> a Timing of the timed rounds only."""
    kept = [r for r in rounds if r[2] is not None]
    return Timing(
        [r[0] for r in kept],
        [r[2] for r in kept if r[2] is not None],
        [r[1] for r in kept] if steps else None,
        len(rounds) - len(kept),
    )


def _rate(tokens: int, seconds: float) -> float | None:
    """tokens/s over a timed span; None when the span timed nothing (a clock that did not move)."""
    return tokens / seconds if tokens > 0 and seconds > 0 else None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def time_mixchat(engine, prompts: list[list[int]], new_tokens: int, repeats: int) -> Timing:  # type: ignore[no-untyped-def]
    _mixchat_round(engine, prompts, new_tokens)  # warms up
    return _timing([_mixchat_round(engine, prompts, new_tokens) for _ in range(repeats)])


def _mixchat_round(engine, prompts: list[list[int]], new_tokens: int) -> tuple[float, float, float | None]:  # type: ignore[no-untyped-def]
    """One timed generation: (time to first token, first decode step, decode tokens/s after it)."""
    dev = engine.device
    rows = list(range(len(prompts)))
    cache = engine.new_cache(batch=len(prompts))
    _sync(dev)
    t0 = time.perf_counter()
    logits = None
    for item in engine.prefill(cache, rows, prompts):
        if isinstance(item, torch.Tensor):
            logits = item
    assert logits is not None
    nxt = logits.argmax(-1).tolist()
    t1 = time.perf_counter()
    # The first step on a new cache captures the CUDA graph on a GPU: counted apart from the speed.
    logits = engine.forward(cache, rows, [[t] for t in nxt])
    nxt = logits.argmax(-1).tolist()
    t1b = time.perf_counter()
    if getattr(engine.model, "micro_batches", 1) > 1 and len(rows) > 1:
        _interleaved_decode(engine, cache, nxt, new_tokens - 1)
    else:
        for _ in range(new_tokens - 1):
            logits = engine.forward(cache, rows, [[t] for t in nxt])
            nxt = logits.argmax(-1).tolist()
    _sync(dev)
    t2 = time.perf_counter()
    return t1 - t0, t1b - t1, _rate(len(prompts) * (new_tokens - 1), t2 - t1b)


@torch.inference_mode()
def time_against_transformers(  # type: ignore[no-untyped-def]
    engine, prompts: list[list[int]], new_tokens: int, repeats: int
) -> tuple[Timing, Timing, int]:
    """mixchat and transformers in alternating rounds: (ours, theirs, our peak memory in bytes).

    On a shared machine a slow spell lasts seconds. Run all of one side and then all of the other, and the
    spell lands on whichever ran then and skews the ratio; alternate, and it lands on both. Each side warms
    up first, and our memory peak is read before transformers' twin of the model exists.
    """
    _mixchat_round(engine, prompts, new_tokens)
    peak = peak_memory_bytes(engine.device)
    hf = transformers_twin(engine.model)
    ids = torch.tensor(prompts, device=engine.device)
    _transformers_round(hf, ids, new_tokens)
    ours, theirs = [], []
    for _ in range(repeats):
        ours.append(_mixchat_round(engine, prompts, new_tokens))
        theirs.append(_transformers_round(hf, ids, new_tokens))
    del hf
    return _timing(ours), _timing([(t, 0.0, tps) for t, tps in theirs], steps=False), peak


def _interleaved_decode(engine, cache, first: list[int], new_tokens: int) -> None:  # type: ignore[no-untyped-def]
    """Greedy decode with the batch split into micro-batches that each run their own steps.

    A micro-batch's next step needs only its own last logits, so while the last stage finishes step t of
    micro-batch A, the first stage already runs step t of micro-batch B (and then step t + 1 of A): no stage
    waits for a whole step of the batch to come back, as it would if the step were one pass.
    """
    from collections import deque

    from mixchat.distributed.partition import micro_batches

    model = engine.model
    groups = [list(g) for g in micro_batches(len(first), model.micro_batches)]
    m = len(groups)
    nxt = list(first)
    steps = [0] * m
    in_flight: deque = deque()

    def submit(g: int) -> None:
        rows = groups[g]
        layout = cache.plan([1] * len(rows), rows)
        tokens = torch.tensor([nxt[r] for r in rows], dtype=torch.long, device=engine.device)
        in_flight.append((g, layout, model.submit(tokens, layout, cache, False, True)))

    for g in range(m):
        submit(g)
    while in_flight:
        g, layout, pending = in_flight.popleft()
        logits = pending.wait()
        cache.advance(layout)
        for r, t in zip(groups[g], logits.argmax(-1).tolist(), strict=True):
            nxt[r] = t
        steps[g] += 1
        if steps[g] < new_tokens:
            submit(g)


def _transformers_round(hf, ids: torch.Tensor, new_tokens: int) -> tuple[float, float | None]:  # type: ignore[no-untyped-def]
    """transformers' generate with its KV cache (prompts of equal length, so no padding): (time to first
    token, decode tokens/s). The decode time is a long generation's time less a one-token generation's; when
    that difference is not positive (a stall in the short one) the round has no decode rate (None)."""
    kw = dict(do_sample=False, eos_token_id=None, pad_token_id=0)
    _sync(ids.device)
    t0 = time.perf_counter()
    hf.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw)
    _sync(ids.device)
    t1 = time.perf_counter()
    hf.generate(ids, max_new_tokens=new_tokens + 1, min_new_tokens=new_tokens + 1, **kw)
    _sync(ids.device)
    t2 = time.perf_counter()
    return t1 - t0, _rate(ids.shape[0] * new_tokens, (t2 - t1) - (t1 - t0))


def transformers_twin(model):  # type: ignore[no-untyped-def]
    """transformers' Mixtral/Mistral holding the same weights, built without a second full copy.

    The twin is made on the meta device and its parameters assigned from ours (renamed, q/k permuted, and
    for transformers 5 the experts fused into `gate_up_proj`), so a big shape fits beside the original.
    """
    from mixchat.loader import hf_state_dict

    transformers = _import_transformers()
    cfg = {k: v for k, v in hf_config(model.args).items() if k not in ("architectures", "model_type")}
    if model.args.moe:
        config, cls = transformers.MixtralConfig(**cfg), transformers.MixtralForCausalLM
    else:
        config, cls = transformers.MistralConfig(**cfg), transformers.MistralForCausalLM
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        hf = cls(config)
    wanted = set(hf.state_dict())
    state = hf_state_dict(model, keep_device=True)
    if model.args.moe and any(k.endswith("mlp.experts.gate_up_proj") for k in wanted):
        for i in range(model.args.n_layers):
            pre = f"model.layers.{i}."
            ff = model.layers[i].feed_forward
            for j in range(model.args.moe.num_experts):
                for w in ("w1", "w2", "w3"):
                    state.pop(f"{pre}block_sparse_moe.experts.{j}.{w}.weight")
            state[pre + "mlp.gate.weight"] = state.pop(pre + "block_sparse_moe.gate.weight")
            gate_up = torch.cat([ff.w1, ff.w3], dim=1)  # [E, 2F, D]
            # Ours now reads its w1/w3 from the fused copy, and the separate originals are freed: with a
            # second copy of two thirds of the expert weights, Mixtral 8x7B would not fit one 141 GB GPU.
            F_ = ff.w1.shape[1]
            ff.w1.data, ff.w3.data = gate_up[:, :F_], gate_up[:, F_:]
            state[pre + "mlp.experts.gate_up_proj"] = gate_up
            state[pre + "mlp.experts.down_proj"] = ff.w2
    missing = wanted - set(state)
    if missing:
        raise UserError(f"cannot build the transformers twin: no weights for {sorted(missing)[0]}")
    hf.load_state_dict({k: state[k] for k in wanted}, assign=True, strict=True)
    rotary = hf.model.rotary_emb
    with torch.device(model.device):
        hf.model.rotary_emb = type(rotary)(config=config)
    return hf.eval()


def _import_transformers():  # type: ignore[no-untyped-def]
    try:
        import transformers
    except ImportError:
        raise UserError("--compare transformers needs the transformers package (pip install transformers)") from None
    transformers.logging.set_verbosity_error()
    return transformers


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        raise UserError("no round could be timed (raise --new-tokens or --repeats)")
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run(args: argparse.Namespace) -> int:
    from mixchat.engine import Engine
    from mixchat.loader import build_model, inspect_folder, quant_spec
    from mixchat.quant.format import QuantSpec
    from mixchat.runtime import resolve_model_path
    from mixchat.shapes import named_shape, random_model_on

    device = resolve_device(args.device)
    requested = quant_from_args(args)
    if args.shape and args.model:
        raise UserError("give --model or --shape, not both")
    if args.new_tokens < 2:
        raise UserError("--new-tokens must be at least 2 (the first decode step is timed apart)")
    torch.manual_seed(args.seed)
    pipeline = current_pipeline()
    if args.micro_batches > 1 and pipeline is None:
        raise UserError("--micro-batches needs a pipeline: torchrun --nproc-per-node N -m mixchat bench ...")
    if pipeline is not None:
        device = pipeline.device
    if args.shape:
        margs = named_shape(args.shape)
        if args.max_context:
            margs.max_context = args.max_context
        spec = requested or QuantSpec()
        dtype = resolve_dtype(args.dtype, device, quantized=spec.quantized)
        if pipeline is not None:
            model = pipeline.lead(pipeline.stage_from_shape(margs, dtype, args.seed, spec))
        else:
            model = random_model_on(margs, device, dtype, args.seed, spec)
        label = f"{args.shape} (random weights)"
    else:
        ckpt = inspect_folder(resolve_model_path(args.model), max_context=args.max_context)
        spec = quant_spec(ckpt, requested)
        dtype = resolve_dtype(args.dtype, device, ckpt, spec.quantized)
        if pipeline is not None:
            model = pipeline.lead(pipeline.stage_from_checkpoint(ckpt, dtype, spec))
        else:
            model = build_model(ckpt, device, dtype, spec)
        label = str(ckpt.folder)
    margs = model.args
    if None in margs.layer_windows and args.prompt_tokens + args.new_tokens > margs.cache_capacity:
        raise UserError("prompt + new tokens exceed the context; lower them or raise --max-context")
    if pipeline is not None:
        from mixchat.distributed.driver import PipelineEngine

        model.micro_batches = args.micro_batches
        engine: Engine = PipelineEngine(model, None, chunk_size=args.chunk_size, eos_id=-1)
    else:
        engine = Engine(model, None, chunk_size=args.chunk_size, eos_id=-1)
    gen = torch.Generator().manual_seed(args.seed)
    prompts = [
        torch.randint(3, margs.vocab_size, (args.prompt_tokens,), generator=gen).tolist() for _ in range(args.batch)
    ]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    theirs: Timing | None = None
    if args.compare:
        ours, theirs, peak = time_against_transformers(engine, prompts, args.new_tokens, args.repeats)
    else:
        ours = time_mixchat(engine, prompts, args.new_tokens, args.repeats)
        peak = peak_memory_bytes(device)
    total, active = margs.param_counts()
    elem = torch.tensor([], dtype=dtype).element_size()
    result: dict = {
        "model": label,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        # Small CPU models choose their decode threads by timing steps (mixchat/thread_choice.py): the pick.
        "decode_threads": chooser.best(args.batch) if (chooser := getattr(engine, "step_threads", None)) else None,
        "dtype": str(dtype).removeprefix("torch."),
        "quant": spec.label,
        "weight_bytes": weight_bytes(model),
        "batch": args.batch,
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "dropped_rounds": {"mixchat": ours.dropped, **({"transformers": theirs.dropped} if theirs else {})},
        "params_total": total,
        "params_active": active,
        "ttft_s": _summary(ours.ttft),
        "prefill_tokens_per_s": statistics.median(args.batch * args.prompt_tokens / t for t in ours.ttft),
        "decode_tokens_per_s": _summary(ours.decode_tps),
        "first_decode_step_s": statistics.median(ours.first_step or [0.0]),
        "cuda_graphs": engine.graph_decoder is not None,
        "peak_memory_bytes": peak,
    }
    if pipeline is not None:
        per_rank = model.peak_memory()
        weights = model.weight_bytes()
        result["peak_memory_bytes"] = max(per_rank)
        result["weight_bytes"] = sum(weights)
        result["pipeline"] = {
            "ranks": len(per_rank),
            "micro_batches": args.micro_batches,
            "prefill_passes_in_flight": engine.prefill_depth,  # pre-fill streams its chunks (PipelineEngine)
            "layers_per_rank": [len(p.layers) for p in pipeline.parts],
            "peak_memory_bytes_per_rank": per_rank,
            "weight_bytes_per_rank": weights,  # each rank's own layers, quantized while loading with --quant
            # rank 0's stage replays its decode steps from CUDA graphs (the other ranks decide alike)
            "stage_graphs": model.graphs is not None,
        }
    if device.type == "cuda" and args.batch == 1:
        step_bytes = active * bytes_per_weight(spec, elem)  # this format's own bound
        result["decode_bandwidth_bound_tokens_per_s"] = H200_COPY_BANDWIDTH / step_bytes
        result["decode_fraction_of_bound"] = result["decode_tokens_per_s"]["median"] * step_bytes / H200_COPY_BANDWIDTH
    if args.window_check and isinstance(margs.sliding_window, int):
        result["cache_bytes_over_conversation"] = _window_check(engine)
    if theirs is not None:
        result["transformers"] = {"ttft_s": _summary(theirs.ttft), "decode_tokens_per_s": _summary(theirs.decode_tps)}
        result["decode_speed_ratio"] = result["decode_tokens_per_s"]["median"] / statistics.median(theirs.decode_tps)
        result["ttft_speedup_ratio"] = statistics.median(theirs.ttft) / result["ttft_s"]["median"]
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print(result)
    return 0


@torch.inference_mode()
def _window_check(engine) -> list[dict[str, int]]:  # type: ignore[no-untyped-def]
    W = engine.model.args.sliding_window
    cache = engine.new_cache()
    out = []
    gen = torch.Generator().manual_seed(1)
    for k in range(1, 21):
        for item in engine.prefill(cache, [0], [torch.randint(3, 100, (W,), generator=gen).tolist()]):
            del item
        if k in (1, 2, 5, 10, 20):
            out.append({"tokens": cache.seen[0], "cache_bytes": cache.nbytes})
    return out


def _print(r: dict) -> None:
    d = r["decode_tokens_per_s"]
    print(f"{r['model']} on {r['device']} ({r['dtype']}, {r['threads']} threads), batch {r['batch']}")
    print(
        f"  time to first token ({r['prompt_tokens']} tokens): {r['ttft_s']['median'] * 1000:.1f} ms  "
        f"(pre-fill {r['prefill_tokens_per_s']:,.0f} tokens/s)"
    )
    print(f"  decode: {d['median']:.1f} tokens/s (min {d['min']:.1f}, max {d['max']:.1f}) over {r['repeats']} repeats")
    print(f"  peak memory: {r['peak_memory_bytes'] / 2**20:,.0f} MiB")
    if "pipeline" in r:
        pp = r["pipeline"]
        each = ", ".join(f"rank {i}: {b / 2**20:,.0f} MiB" for i, b in enumerate(pp["peak_memory_bytes_per_rank"]))
        weights = ", ".join(f"{b / 2**20:,.1f}" for b in pp["weight_bytes_per_rank"])
        print(
            f"  pipeline: {pp['ranks']} ranks, layers {pp['layers_per_rank']}, {pp['micro_batches']} micro-batches; "
            f"peak memory {each}; weights {weights} MiB"
        )
    if "decode_fraction_of_bound" in r:
        print(
            f"  bandwidth bound {r['decode_bandwidth_bound_tokens_per_s']:.0f} tokens/s: "
            f"{r['decode_fraction_of_bound'] * 100:.0f}% reached"
        )
    for row in r.get("cache_bytes_over_conversation", []):
        print(f"  cache after {row['tokens']:,} tokens: {row['cache_bytes']:,} bytes")
    if "transformers" in r:
        t = r["transformers"]
        print(
            f"  transformers: ttft {t['ttft_s']['median'] * 1000:.1f} ms, decode "
            f"{t['decode_tokens_per_s']['median']:.1f} tokens/s"
        )
        print(f"  ratios: decode {r['decode_speed_ratio']:.2f}x, time to first token {r['ttft_speedup_ratio']:.2f}x")
