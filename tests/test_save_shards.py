"""A model saved in several weight files loads as the same checkpoint as one file.

The built-in model ships in the source tree in files under 45 MB (`SHIPPED_FILE_BYTES`), so the trainer
splits a larger model; the loader reads every `consolidated*.safetensors` of a folder as one checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from mixchat.loader import build_model, inspect_folder, random_model, save_native
from mixchat.model.args import ModelArgs, MoeArgs


def _args() -> ModelArgs:
    return ModelArgs(
        dim=64, n_layers=3, head_dim=16, hidden_dim=96, n_heads=4, n_kv_heads=2, vocab_size=300,
        sliding_window=32, max_context=128, moe=MoeArgs(4, 2),
    )  # fmt: skip


def _stored(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("consolidated*.safetensors")):
        part = load_file(str(f))
        assert not set(part) & set(out), "a tensor stored twice"
        out.update(part)
    return out


def test_sharded_save_holds_the_same_tensors_and_loads_alike(tmp_path: Path) -> None:
    model = random_model(_args(), seed=3)
    one = save_native(model, tmp_path / "one", dtype=torch.bfloat16)
    shard = 40_000  # bytes: several files for this model
    many = save_native(model, tmp_path / "many", dtype=torch.bfloat16, shard_bytes=shard)
    names = sorted(p.name for p in many.glob("*.safetensors"))
    n = len(names)
    assert n > 2 and names == [f"consolidated-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    assert [p.name for p in one.glob("*.safetensors")] == ["consolidated.safetensors"]
    a, b = _stored(one), _stored(many)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for f in many.glob("*.safetensors"):  # a file exceeds the limit only by holding one tensor bigger than it
        part = load_file(str(f))
        size = sum(t.numel() * t.element_size() for t in part.values())
        assert size <= shard or len(part) == 1
    m1 = build_model(inspect_folder(one), "cpu", torch.float32)
    m2 = build_model(inspect_folder(many), "cpu", torch.float32)
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)


def test_small_model_keeps_one_file_under_a_limit(tmp_path: Path) -> None:
    folder = save_native(random_model(_args(), seed=3), tmp_path / "m", shard_bytes=10**9)
    assert sorted(p.name for p in folder.iterdir()) == ["consolidated.safetensors", "params.json"]
