"""`mixchat bench`: its transformers twin holds the same weights, and the report has the promised fields."""

from __future__ import annotations

import json

import pytest
import torch
from session_support import make_checkpoint

from mixchat.cli.main import main


def test_transformers_twin_matches_mixchat(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("transformers")
    from mixchat.cli.bench import transformers_twin
    from mixchat.loader import random_model
    from mixchat.model.args import ModelArgs, MoeArgs
    from mixchat.model.layout import fresh_layout

    for moe in (MoeArgs(8, 2), None):
        args = ModelArgs(
            dim=64,
            n_layers=2,
            head_dim=16,
            hidden_dim=64,
            n_heads=4,
            n_kv_heads=2,
            vocab_size=300,
            sliding_window=16,
            moe=moe,
        )
        model = random_model(args, seed=3, std=0.2)
        tokens = torch.randint(0, 300, (40,))
        ours = model(tokens, fresh_layout([40], 16, "cpu"))
        with torch.no_grad():
            theirs = transformers_twin(model)(tokens[None]).logits[0]
        assert (ours - theirs).abs().max().item() < 1e-4


def test_bench_json_reports_ratios(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("transformers")
    folder = make_checkpoint(tmp_path / "m")
    rc = main(
        [
            "bench",
            "--model",
            str(folder),
            "--prompt-tokens",
            "40",
            "--new-tokens",
            "4",
            "--repeats",
            "1",
            "--compare",
            "transformers",
            "--window-check",
            "--json",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    assert r["decode_tokens_per_s"]["median"] > 0 and r["ttft_s"]["median"] > 0
    assert r["decode_speed_ratio"] > 0 and r["ttft_speedup_ratio"] > 0
    sizes = {row["cache_bytes"] for row in r["cache_bytes_over_conversation"]}
    assert len(sizes) == 1  # flat across 20 windows
