"""Per-layer sliding windows (Ministral): each layer's rolling buffer has its own size.

The reference for every cached path is one cache-free pass of the model module (`fresh_layout` with one
window per layer), which test_mistral_family.py checks against transformers' Ministral; here the windows
also differ between sliding layers (6 and 10, besides full attention), which params.json can express and
config.json cannot. Native params.json lists are cyclic: layer i uses entry i % len(list).
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest
import torch
from session_support import tokenizer_v1

from mixchat.engine import Engine
from mixchat.exec.executors import CpuExecutor, ModuleExecutor
from mixchat.loader import LoadError, inspect_folder, random_model, save_native
from mixchat.model.args import ModelArgs, MoeArgs
from mixchat.model.layout import fresh_layout
from mixchat.runtime import load_runtime
from mixchat.session import ChatSettings, Conversation, ConversationStore, fingerprint_model
from mixchat.session.cachefile import read_cache, write_cache
from mixchat.tui.messages import CacheState
from mixchat.tui.streaming import cache_state

pytestmark = pytest.mark.usefixtures("single_thread")

WINDOWS = [None, 6, 10]  # repeated over 6 layers: full, 6, 10, full, 6, 10
TOL = 1e-4


def per_layer_args(moe: bool = False, vocab: int = 512) -> ModelArgs:
    return ModelArgs(dim=32, n_layers=6, head_dim=8, hidden_dim=48, n_heads=4, n_kv_heads=2, vocab_size=vocab,
                     rope_theta=1e6, sliding_window=list(WINDOWS), moe=MoeArgs(4, 2) if moe else None,
                     max_context=128)  # fmt: skip


@pytest.fixture(scope="module", params=["dense", "moe"])
def model(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    return random_model(per_layer_args(moe=request.param == "moe"), seed=21, std=0.2)


def _tokens(n: int, seed: int, vocab: int = 512) -> list[int]:
    return torch.randint(3, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@torch.inference_mode()
def _reference(model, tokens: list[int]) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return model(torch.tensor(tokens), fresh_layout([len(tokens)], model.args.layout_window, "cpu"))


def test_windows_are_cyclic_and_matter(model) -> None:  # type: ignore[no-untyped-def]
    assert model.args.layer_windows == [None, 6, 10, None, 6, 10]
    assert model.args.windows_summary == (6, None)
    tokens = _tokens(40, 1)
    ref = _reference(model, tokens)
    for one in (6, 10, None):
        with torch.inference_mode():
            other = model(torch.tensor(tokens), fresh_layout([40], one, "cpu"))
        assert (other[:6] - ref[:6]).abs().max() <= TOL  # no window differs while all cover everything
        assert (other - ref).abs().max() > 1e-2


def test_params_json_list_round_trips(model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = save_native(model, tmp_path / "m")
    params = json.loads((folder / "params.json").read_text())
    assert params["sliding_window"] == WINDOWS
    assert inspect_folder(folder).args.layer_windows == model.args.layer_windows
    params["sliding_window"] = [None, 6, 10, 4]  # 4 windows do not repeat evenly over 6 layers
    (folder / "params.json").write_text(json.dumps(params))
    with pytest.raises(LoadError, match="must divide n_layers"):
        inspect_folder(folder)


def test_cache_buffers_have_their_own_sizes(model) -> None:  # type: ignore[no-untyped-def]
    engine = Engine(model, None)
    cache = engine.new_cache(2, max_context=128)
    sizes = sorted((g.window, g.capacity, len(g.layers)) for g in cache.groups if g.window is not None)
    assert sizes == [(6, 6, 2), (10, 10, 2)]
    assert cache.capacity == 128 and cache.window is None and cache.smallest_capacity == 6
    shapes = {g.window: tuple(g.k.shape) for g in cache.groups}
    assert shapes[6][2] == 6 and shapes[10][2] == 10


@pytest.mark.parametrize("executor", ["module", "runner"])
@pytest.mark.parametrize("chunk", [1, 4, 7, 64])
def test_chunked_packed_prefill_and_decode_match_one_pass(
    model, executor: str, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    engine = Engine(
        model, None, eos_id=-1, executor=CpuExecutor(model) if executor == "runner" else ModuleExecutor(model)
    )
    prompts = [_tokens(37, 2), _tokens(23, 3)]
    refs = [_reference(model, p) for p in prompts]
    cache = engine.new_cache(2, max_context=128)
    pos = [0, 0]
    while any(p < len(t) for p, t in zip(pos, prompts, strict=True)):
        rows = [r for r in range(2) if pos[r] < len(prompts[r])]
        chunks = [prompts[r][pos[r] : pos[r] + chunk + r] for r in rows]  # different lengths per row
        last = engine.forward(cache, rows, chunks)
        for j, r in enumerate(rows):
            pos[r] += len(chunks[j])
            err = (last[j] - refs[r][pos[r] - 1]).abs().max().item()
            assert err <= TOL, f"row {r} position {pos[r] - 1}: {err:.2e}"


def test_snapshot_restore_and_cache_file(model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    engine = Engine(model, None, eos_id=-1)
    tokens = _tokens(30, 4)
    ref = _reference(model, tokens)
    cache = engine.new_cache(1, max_context=128)
    engine.forward(cache, [0], [tokens[:27]])
    fp = fingerprint_model(model, model.args)
    record = write_cache(tmp_path / "cache-1.safetensors", cache, fp)
    assert record.live == 27
    restored = engine.new_cache(1, max_context=128)
    read_cache(tmp_path / "cache-1.safetensors", record, fp, restored, n_ids=30)
    for r, c in enumerate((cache, restored)):
        for t in range(27, 30):
            last = engine.forward(c, [0], [[tokens[t]]])[0]
            assert (last - ref[t]).abs().max() <= TOL, (r, t)


def test_undo_point_restores_every_buffer(model) -> None:  # type: ignore[no-untyped-def]
    engine = Engine(model, None, eos_id=-1)
    cache = engine.new_cache(1, max_context=128)
    engine.forward(cache, [0], [_tokens(25, 5)])  # every window buffer has wrapped
    before = [(g.k.clone(), g.v.clone()) for g in cache.groups]
    point = cache.undo_point(0, 9)
    engine.forward(cache, [0], [_tokens(9, 6)])
    cache.rollback(point)
    assert cache.seen[0] == 25
    for (k, v), g in zip(before, cache.groups, strict=True):
        # Window buffers wrapped, so every slot counts; a full-attention buffer's slots past `seen` are dead.
        n = g.slots if g.window is not None else 25
        assert torch.equal(k[:, :, :n], g.k[:, :, :n]) and torch.equal(v[:, :, :n], g.v[:, :, :n]), g.window


@pytest.fixture(scope="module")
def runtime_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = save_native(random_model(per_layer_args(vocab=32000), seed=22, std=0.2), tmp_path_factory.mktemp("pl"))
    shutil.copy(tokenizer_v1(), folder / "tokenizer.model.v1")
    return folder


def test_conversation_cache_persists_and_saves(runtime_folder: Path, tmp_path: Path) -> None:
    rt = load_runtime(runtime_folder, device="cpu", dtype="float32")
    settings = ChatSettings(system="Be brief.", temperature=0.0, max_tokens=5, chunk_size=4)
    conv = Conversation.from_runtime(rt, settings)
    for text in ("Hello there, how are you?", "And then?", "Bye"):
        list(conv.send(text, threading.Event()))
    # Semantics 7: the persistent cache gives what one pre-fill of every id gives.
    ids = conv.ids
    ref = _reference(rt.model, ids)[-1]
    assert (conv.next_token_logits() - ref).abs().max() <= TOL
    store = ConversationStore(tmp_path / "data")
    store.save(conv, "per layer")
    loaded = store.load_for(rt, "per layer")
    assert loaded.problem is None
    assert (loaded.conversation.next_token_logits() - ref).abs().max() <= TOL
    state = cache_state(conv)
    assert (state.smallest_capacity, state.smallest_live) == (6, 6)
    assert conv.stats().smallest_capacity == 6
    from mixchat.cli.chat import format_stats

    assert any("smallest layer window: 6/6" in line for line in format_stats(conv.stats()))
    assert (state.capacity, state.live) == (rt.model.args.max_context, len(ids) - 1)


def test_gauge_shows_smallest_and_largest_layer() -> None:
    from textual.app import App, ComposeResult

    from mixchat.tui.widgets.cache_gauge import CacheGauge

    class GaugeApp(App[None]):
        def compose(self) -> ComposeResult:
            yield CacheGauge(id="g")

    async def run() -> tuple[str, str]:
        app = GaugeApp()
        async with app.run_test(size=(120, 3)):
            gauge = app.query_one(CacheGauge)
            gauge.state = CacheState(41, 128, 41, 0, 4096, False, 6, 6)
            wide = "".join(text for line in gauge.build(120) for text, _ in line)
            narrow = "".join(text for line in gauge.build(40) for text, _ in line)
        return wide, narrow

    import asyncio

    wide, narrow = asyncio.run(run())
    assert "41/128" in wide and "smallest layer 6/6" in wide
    assert "41/128" in narrow and "(6/6)" in narrow
