"""`mixchat generate` / `info` on saved random checkpoints, and one-line errors for bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import hf_config
from safetensors.torch import load_file, save_file
from session_support import tokenizer_v1

from mixchat.cli.main import main

pytest.importorskip("mistral_common")


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """transformers' own Mixtral (vocab of the real v1 tokenizer), saved in HF layout with a tokenizer."""
    transformers = pytest.importorskip("transformers")
    from mixchat.model.args import ModelArgs, MoeArgs

    args = ModelArgs(
        dim=64,
        n_layers=2,
        head_dim=16,
        hidden_dim=64,
        n_heads=4,
        n_kv_heads=2,
        vocab_size=32000,
        sliding_window=16,
        moe=MoeArgs(8, 2),
    )
    torch.manual_seed(0)
    model = transformers.MixtralForCausalLM(hf_config(args)).eval()
    folder = tmp_path_factory.mktemp("hf")
    model.save_pretrained(str(folder), safe_serialization=True)
    shutil.copy(tokenizer_v1(), folder / "tokenizer.model")
    return folder, model


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_generate_json_packed_matches_transformers_greedy(hf_folder, capsys) -> None:  # type: ignore[no-untyped-def]
    folder, hf = hf_folder
    rc, out, err = run_cli(
        capsys,
        "generate",
        "--model",
        str(folder),
        "--prompt",
        "Hello there, how are you?",
        "--prompt",
        "Grüße aus Tokyo",
        "--temperature",
        "0",
        "--max-tokens",
        "12",
        "--json",
        "--device",
        "cpu",
    )
    assert rc == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 2
    for rec in records:
        assert {"prompt_ids", "ids", "text", "routing", "finish_reason"} <= rec.keys()
        assert rec["stats"]["batch"] == 2  # both prompts ran as one packed batch
        assert len(rec["routing"]) == len(rec["ids"])
        for per_token in rec["routing"]:
            assert len(per_token) == 2  # layers
            for layer in per_token:
                assert len(layer["experts"]) == 2 and abs(sum(layer["weights"]) - 1) < 1e-5
        with torch.no_grad():
            ref = hf.generate(
                torch.tensor([rec["prompt_ids"]]), do_sample=False, max_new_tokens=12, eos_token_id=None, pad_token_id=0
            )[0, len(rec["prompt_ids"]) :].tolist()
        n = len(rec["ids"])
        assert rec["ids"] == ref[:n]
        assert rec["finish_reason"] == ("eos" if rec["ids"][-1] == 2 else "length")


def test_generate_chat_uses_the_template(hf_folder, capsys) -> None:  # type: ignore[no-untyped-def]
    from mistral_common.protocol.instruct.messages import SystemMessage, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    folder, _ = hf_folder
    rc, out, _ = run_cli(
        capsys,
        "generate",
        "--model",
        str(folder),
        "--chat",
        "--system",
        "Be brief.",
        "--prompt",
        "Hi!",
        "--max-tokens",
        "2",
        "--json",
        "--temperature",
        "0",
    )
    assert rc == 0
    ref = (
        MistralTokenizer.from_file(str(tokenizer_v1()))
        .encode_chat_completion(
            ChatCompletionRequest(messages=[SystemMessage(content="Be brief."), UserMessage(content="Hi!")])
        )
        .tokens
    )
    assert json.loads(out)["prompt_ids"] == ref


def test_info(hf_folder, capsys) -> None:  # type: ignore[no-untyped-def]
    folder, _ = hf_folder
    rc, out, _ = run_cli(capsys, "info", "--model", str(folder), "--json")
    assert rc == 0
    info = json.loads(out)
    assert info["experts"] == 8 and info["experts_per_token"] == 2 and info["sliding_window"] == 16
    assert info["kv_cache_bytes_per_token"] == 2 * 2 * 2 * 16 * 4  # K+V, layers, kv heads, head_dim, fp32
    assert info["params_active_per_token"] < info["params_total"]
    assert info["chat_template"] == "v1"


def _copy(folder: Path, dest: Path) -> Path:
    shutil.copytree(folder, dest)
    return dest


def bad_cases(folder: Path, tmp: Path) -> dict[str, tuple[list[str], str]]:
    no_config = _copy(folder, tmp / "noconfig")
    (no_config / "config.json").unlink()
    bad_json = _copy(folder, tmp / "badjson")
    (bad_json / "config.json").write_text('{"hidden_size": 64,')
    missing = _copy(folder, tmp / "missing")
    state = load_file(str(missing / "model.safetensors"))
    state.pop("model.layers.1.self_attn.k_proj.weight")
    save_file(state, str(missing / "model.safetensors"))
    shape = _copy(folder, tmp / "shape")
    state = load_file(str(shape / "model.safetensors"))
    state["model.norm.weight"] = torch.ones(65)
    save_file(state, str(shape / "model.safetensors"))
    pth = tmp / "pth"
    pth.mkdir()
    shutil.copy(folder / "config.json", pth / "config.json")
    (pth / "pytorch_model.bin").write_bytes(b"not really a pickle")
    return {
        "missing folder": (["--model", str(tmp / "nowhere")], "not found"),
        "no config": (["--model", str(no_config)], "no params.json"),
        "malformed json": (["--model", str(bad_json)], "not valid JSON"),
        "missing tensor": (["--model", str(missing)], "lacks tensor"),
        "wrong shape": (["--model", str(shape)], "shape"),
        "pickle checkpoint": (["--model", str(pth)], "pickle"),
        "unknown dtype": (["--model", str(folder), "--dtype", "float8"], "invalid choice"),
    }


def test_bad_input_gives_one_line_and_nonzero_exit(hf_folder, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    folder, _ = hf_folder
    for name, (argv, needle) in bad_cases(folder, tmp_path).items():
        try:
            rc, _out, err = run_cli(capsys, "generate", "--prompt", "x", "--max-tokens", "1", *argv)
        except SystemExit as e:  # argparse usage errors exit through SystemExit
            rc = int(e.code or 0)
            _out, err = capsys.readouterr()
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert rc != 0, name
        assert len(lines) == 1, (name, err)
        assert needle in lines[0], (name, lines[0])
        assert "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_in_a_real_process(hf_folder) -> None:  # type: ignore[no-untyped-def]
    folder, _ = hf_folder
    proc = subprocess.run(
        [sys.executable, "-m", "mixchat", "generate", "--model", str(folder), "--prompt", "x", "--device", "cuda"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "CUDA" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
