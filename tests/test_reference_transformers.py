"""mixchat against transformers' Mixtral/Mistral (eager attention) as an independent reference.

The checkpoint goes through transformers' own `save_pretrained`, so the loader's name mapping and q/k
un-permutation are tested too, not just the forward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import (
    W,
    load_mixchat,
    make_args,
    make_hf_model,
    one_pass_logits,
    random_tokens,
    save_hf_pretrained,
    save_native_layout,
)
from safetensors.torch import save_file

from mixchat.engine import Engine, SequenceFinished, TokenGenerated
from mixchat.loader import inspect_folder, save_hf
from mixchat.model.layers import Routing
from mixchat.model.layout import fresh_layout
from mixchat.model.transformer import Transformer
from mixchat.sampling import SamplingSettings

pytestmark = pytest.mark.usefixtures("single_thread")

transformers = pytest.importorskip("transformers")

PROMPT_LEN = 3 * W + 5
KINDS = ["mixtral", "mistral"]


Pair = tuple[Any, Transformer, Path]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Pair]:
    """kind -> (transformers model, mixchat model loaded from its save_pretrained folder, that folder)."""
    built: dict[str, Pair] = {}

    def get(kind: str) -> Pair:
        if kind not in built:
            args = make_args(kind)
            hf = make_hf_model(args, seed=11)
            folder = save_hf_pretrained(hf, tmp_path_factory.mktemp(f"hf_{kind}"))
            ckpt = inspect_folder(folder)
            assert ckpt.layout == "hf"
            assert ckpt.args == args, "config.json written by transformers must read back as the same ModelArgs"
            built[kind] = (hf, load_mixchat(folder), folder)
        return built[kind]

    return get


@pytest.fixture(params=KINDS)
def pair(request: pytest.FixtureRequest, pairs: Callable[[str], Pair]) -> Pair:
    return pairs(request.param)


@pytest.fixture
def moe_pair(pairs: Callable[[str], Pair]) -> Pair:
    return pairs("mixtral")


@torch.inference_mode()
def hf_logits(hf: Any, tokens: list[int], **kw: Any) -> Any:
    return hf(torch.tensor([tokens]), use_cache=False, **kw)


def test_logits_match_transformers_with_sliding_window(pair: Pair) -> None:
    hf, model, _ = pair
    tokens = random_tokens(PROMPT_LEN, seed=1)
    ref = hf_logits(hf, tokens).logits[0].float()
    ours = one_pass_logits(model, tokens)
    assert ours.shape == ref.shape == (PROMPT_LEN, model.args.vocab_size)
    assert ref.abs().max() > 0.5, "logits should be O(1) for the comparison to mean something"
    err = (ours - ref).abs().max().item()
    assert err <= 1e-4, f"max abs error vs transformers {err:.2e}"

    # The window must matter: ignoring it would give visibly different logits past the first W positions.
    no_window = one_pass_logits(model, tokens, window=None)
    assert (no_window[:W] - ref[:W]).abs().max() <= 1e-4  # identical while the window covers everything
    assert (no_window - ref).abs().max() > 1e-3


def test_logits_match_cached_chunked_prefill(pair: Pair) -> None:
    """The cache path (rolling buffer, chunks that straddle wraps) against transformers too."""
    hf, model, _ = pair
    tokens = random_tokens(PROMPT_LEN, seed=2)
    ref = hf_logits(hf, tokens).logits[0].float()
    engine = Engine(model, None, chunk_size=7, eos_id=-1)
    cache = engine.new_cache(1)
    pos = 0
    while pos < len(tokens):
        chunk = tokens[pos : pos + 7]
        last = engine.forward(cache, [0], [chunk])[0]
        pos += len(chunk)
        err = (last - ref[pos - 1]).abs().max().item()
        assert err <= 1e-4, f"position {pos - 1}: error {err:.2e}"


def test_greedy_generation_matches_transformers(pair: Pair) -> None:
    hf, model, _ = pair
    prompt = random_tokens(PROMPT_LEN, seed=3)
    n_new = 32
    with torch.inference_mode():
        hf.generation_config.eos_token_id = None  # run the full 32 tokens, like eos_id=-1 below
        out = hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=n_new, pad_token_id=0)
    ref = out[0, len(prompt) :].tolist()
    assert len(ref) == n_new

    engine = Engine(model, None, chunk_size=10, eos_id=-1)
    settings = SamplingSettings(temperature=0.0, max_tokens=n_new)
    events = list(engine.generate([prompt], settings))
    ours = [e.token for e in events if isinstance(e, TokenGenerated)]
    finished = [e for e in events if isinstance(e, SequenceFinished)]
    assert ours == ref
    assert len(finished) == 1 and finished[0].reason == "length" and finished[0].ids == ref


def test_native_and_sharded_layouts_round_trip(pair: Pair, tmp_path: Path) -> None:
    hf, model, _ = pair
    tokens = random_tokens(PROMPT_LEN, seed=4)
    base = one_pass_logits(model, tokens)

    native = load_mixchat(save_native_layout(model, tmp_path / "native"))
    assert inspect_folder(tmp_path / "native").layout == "mistral"
    assert native.args == model.args
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), native.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2), n1
    assert (one_pass_logits(native, tokens) - base).abs().max() <= 1e-6

    folder = save_hf(model, tmp_path / "sharded", shards=3)
    ckpt = inspect_folder(folder)
    assert (folder / "model.safetensors.index.json").is_file()
    assert len(ckpt.weight_files) == 3
    sharded = load_mixchat(folder)
    assert sharded.args == model.args
    assert (one_pass_logits(sharded, tokens) - base).abs().max() <= 1e-6

    # mixchat's Hugging Face writer is readable by transformers itself.
    cls = type(hf)
    back = cls.from_pretrained(str(folder), attn_implementation="eager").eval()
    ref = hf_logits(back, tokens).logits[0].float()
    assert (ref - base).abs().max() <= 1e-4


def _check_routing(ours: list[Routing], router_logits: tuple[torch.Tensor, ...], n_tokens: int) -> None:
    assert len(ours) == len(router_logits)
    for layer, (r, ref_logits) in enumerate(zip(ours, router_logits, strict=True)):
        ref_logits = ref_logits.reshape(n_tokens, -1).float()
        assert r.experts.shape == (n_tokens, 2) and r.weights.shape == (n_tokens, 2)
        assert r.weights.dtype == torch.float32
        assert (r.logits.float() - ref_logits).abs().max() <= 1e-4, f"layer {layer}: gate logits differ"
        ref_top, ref_idx = torch.topk(ref_logits, 2, dim=-1)
        # Same two experts, strongest first.
        assert torch.equal(r.experts, ref_idx), f"layer {layer}: experts differ"
        # Weights: softmax over the two selected logits (semantics 5), summing to 1.
        ref_w = torch.softmax(ref_top.double(), dim=-1).float()
        assert (r.weights - ref_w).abs().max() <= 1e-5, f"layer {layer}: weights differ"
        assert (r.weights.sum(-1) - 1).abs().max() <= 1e-6
        assert (r.weights[:, 0] >= r.weights[:, 1]).all()


def test_routing_trace_matches_transformers(moe_pair: Pair) -> None:
    hf, model, _ = moe_pair
    tokens = random_tokens(PROMPT_LEN, seed=5)
    ref = hf_logits(hf, tokens, output_router_logits=True).router_logits
    router_out: list[Routing] = []
    with torch.inference_mode():
        model(torch.tensor(tokens), fresh_layout([len(tokens)], W, "cpu"), router_out=router_out)
    assert len(router_out) == model.args.n_layers
    _check_routing(router_out, ref, len(tokens))
    # Routing is not trivially constant: several experts are used in every layer.
    for r in router_out:
        assert len(set(r.experts.flatten().tolist())) >= 4


def test_engine_routing_trace_matches_recomputation(moe_pair: Pair) -> None:
    """TokenGenerated.routing is the routing at the position that produced the token, every layer."""
    hf, model, _ = moe_pair
    prompt = random_tokens(2 * W + 3, seed=6)
    engine = Engine(model, None, chunk_size=5, eos_id=-1)
    events = list(engine.generate([prompt], SamplingSettings(temperature=0.0, max_tokens=12)))
    gen = [e for e in events if isinstance(e, TokenGenerated)]
    assert len(gen) == 12 and all(e.routing is not None for e in gen)

    full = prompt + [e.token for e in gen[:-1]]
    ref = hf_logits(hf, full, output_router_logits=True).router_logits
    for i, e in enumerate(gen):
        pos = len(prompt) - 1 + i
        assert e.routing is not None
        assert len(e.routing.experts) == model.args.n_layers
        for layer in range(model.args.n_layers):
            top, idx = torch.topk(ref[layer].reshape(len(full), -1)[pos].float(), 2)
            assert e.routing.experts[layer] == idx.tolist(), (i, layer)
            w = torch.softmax(top.double(), -1).tolist()
            assert max(abs(a - b) for a, b in zip(e.routing.weights[layer], w, strict=True)) <= 1e-5


def test_fused_expert_layout_loads(moe_pair: Pair, tmp_path: Path) -> None:
    """transformers >= 5 keeps experts fused in memory (gate_up_proj / down_proj); a checkpoint written
    straight from that state dict must load to the same model."""
    hf, model, _ = moe_pair
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    if not any(k.endswith("mlp.experts.gate_up_proj") for k in state):
        pytest.skip("this transformers version does not fuse experts")
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    hf.config.to_json_file(str(tmp_path / "config.json"))
    fused = load_mixchat(tmp_path)
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), fused.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2), n1
