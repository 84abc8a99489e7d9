"""Honest loading: what mixchat cannot run is refused in one line, before any weight is read.

Each refusal runs the real command line in a fresh interpreter (`python -m mixchat info|generate --model
DIR`) and checks the exit status and that stderr is exactly one line naming the cause, with no traceback.
The dtype default and the memory check are tested in-process as well, where the reading of free memory and
of the weights can be watched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_args

from mixchat import loader, runtime
from mixchat.checkpoint_config import args_from_hf_config
from mixchat.loader import inspect_folder, random_model, save_hf, save_native
from mixchat.model.args import ConfigError, ModelArgs
from mixchat.runtime import UserError, cpu_auto_dtype, load_runtime

mistral_common = pytest.importorskip("mistral_common")
DATA = Path(mistral_common.__file__).parent / "data"
V3 = DATA / "mistral_instruct_tokenizer_240323.model.v3"  # 32768 ids
REPO = Path(__file__).resolve().parents[1]


def _run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mixchat", *argv], capture_output=True, text=True, cwd=REPO, timeout=120,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def _one_line_refusal(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def _vocab_args(vocab: int = 32768) -> ModelArgs:
    args = make_args("mistral")
    args.vocab_size = vocab
    return args


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A loadable Hugging Face folder (vocab 32768, SentencePiece v3) that the tests copy and spoil."""
    folder = save_hf(random_model(_vocab_args(), seed=3), tmp_path_factory.mktemp("hf") / "model")
    shutil.copy(V3, folder / "tokenizer.model.v3")
    return folder


def _spoiled(hf_folder: Path, tmp_path: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(hf_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_the_untouched_folder_loads(hf_folder: Path) -> None:
    proc = _run("info", "--model", str(hf_folder))
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("rope_scaling", {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096}),
        ("rope_scaling", {"type": "linear", "factor": 2.0}),
        ("rope_parameters", {"rope_type": "llama3", "rope_theta": 1e6, "factor": 8.0}),
        ("model_type", "llama"),
        ("attention_bias", True),
        ("hidden_act", "gelu"),
        ("layer_types", ["full_attention", "chunked_attention", "sliding_attention"]),
    ],
)
def test_unimplemented_config_fields_are_refused(hf_folder: Path, tmp_path: Path, field: str, value: Any) -> None:
    folder = _spoiled(hf_folder, tmp_path, lambda c: c.__setitem__(field, value))
    _one_line_refusal(_run("info", "--model", str(folder)), "config.json", repr(field))


def test_default_rope_entries_are_accepted(hf_folder: Path, tmp_path: Path) -> None:
    # What transformers itself writes for plain RoPE must not be mistaken for scaling.
    folder = _spoiled(hf_folder, tmp_path, lambda c: c.update(rope_scaling=None, rope_parameters={
        "rope_type": "default", "rope_theta": c["rope_theta"]}))  # fmt: skip
    assert inspect_folder(folder).args.rope_theta == json.loads((hf_folder / "config.json").read_text())["rope_theta"]


def test_rope_scaling_in_params_json_is_refused(tmp_path: Path) -> None:
    folder = save_native(random_model(_vocab_args(), seed=1), tmp_path / "native")
    shutil.copy(V3, folder / "tokenizer.model.v3")
    params = json.loads((folder / "params.json").read_text())
    params["yarn"] = {"factor": 4, "original_max_position_embeddings": 4096, "beta": 32, "alpha": 1}
    (folder / "params.json").write_text(json.dumps(params))
    _one_line_refusal(_run("info", "--model", str(folder)), "params.json", "'yarn'")


def test_tokenizer_larger_than_the_model_is_refused(tmp_path: Path) -> None:
    folder = save_hf(random_model(_vocab_args(vocab=1000), seed=2), tmp_path / "small_vocab")
    shutil.copy(V3, folder / "tokenizer.model.v3")
    _one_line_refusal(_run("info", "--model", str(folder)), "vocabulary mismatch", "32768", "1000")


def test_model_vocab_larger_than_the_tokenizer_is_fine_and_never_sampled(tmp_path: Path) -> None:
    # Mistral pads its tables past the tokenizer; sampling must stay within the tokenizer's ids.
    model = random_model(_vocab_args(vocab=32768 + 64), seed=4)
    with torch.no_grad():
        model.output.weight[32768:] = 1.0  # the padded rows would win every argmax
        model.norm.weight.abs_()
    folder = save_native(model, tmp_path / "padded")
    shutil.copy(V3, folder / "tokenizer.model.v3")
    proc = _run("generate", "--model", str(folder), "--prompt", "Hi", "--max-tokens", "3", "--temperature", "0",
                "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    ids = json.loads(proc.stdout.splitlines()[0])["ids"]
    assert ids and all(i < 32768 for i in ids)


def test_no_tokenizer_says_what_is_expected(hf_folder: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(hf_folder, folder)
    (folder / "tokenizer.model.v3").unlink()
    _one_line_refusal(_run("info", "--model", str(folder)), "tekken.json", "tokenizer.model")


# ---- memory at load ---------------------------------------------------------------------------------------
def test_too_large_for_free_memory_is_refused_in_one_line(hf_folder: Path) -> None:
    proc = _run("generate", "--model", str(hf_folder), "--prompt", "x", "--device", "cpu",
                env={"MIXCHAT_FREE_MEMORY": "100000"})  # fmt: skip
    _one_line_refusal(proc, "the weights need", "--dtype", "--quant", "torchrun")


def test_memory_check_comes_before_any_weight_is_read(hf_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_reading(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a weight was read before the memory check")

    monkeypatch.setattr(loader.TensorEntry, "read", no_reading)
    monkeypatch.setenv("MIXCHAT_FREE_MEMORY", "100000")
    need = loader.weights_nbytes(inspect_folder(hf_folder), torch.float32)
    with pytest.raises(UserError, match="the weights need") as info:
        load_runtime(hf_folder, device="cpu", dtype="float32")
    assert "\n" not in str(info.value)
    monkeypatch.setenv("MIXCHAT_FREE_MEMORY", str(need))  # exactly enough: the check passes, reading starts
    with pytest.raises(AssertionError, match="a weight was read"):
        load_runtime(hf_folder, device="cpu", dtype="float32")


def test_weights_size_is_what_the_model_holds(hf_folder: Path) -> None:
    rt = load_runtime(hf_folder, device="cpu", dtype="float32")
    held = sum(p.numel() * p.element_size() for p in rt.model.parameters())
    assert loader.weights_nbytes(rt.checkpoint, torch.float32) == held


def test_auto_dtype_on_the_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = ModelArgs(dim=4096, n_layers=32, head_dim=128, hidden_dim=14336, n_heads=32, n_kv_heads=8,
                    vocab_size=32768)  # fmt: skip
    ckpt = inspect_folder(save_native(random_model(_vocab_args(), seed=5), tmp_path / "m", dtype=torch.bfloat16))
    assert cpu_auto_dtype(ckpt) == torch.float32  # small models run fastest in float32 (the CPU runner)
    ckpt.args = big  # the same bf16 files, read as a 7B shape: only the size decides, never the weights
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    assert cpu_auto_dtype(ckpt) == torch.bfloat16
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    assert cpu_auto_dtype(ckpt) == torch.float32
    fp32 = inspect_folder(save_native(random_model(_vocab_args(), seed=5), tmp_path / "f32"))
    fp32.args = big
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    assert cpu_auto_dtype(fp32) == torch.float32


def test_plain_read_loader_puts_every_value_in_place(tmp_path: Path) -> None:
    """Direct reads, transformed tensors (HF q/k un-permute) and dtype conversion all give the saved values."""
    model = random_model(_vocab_args(), seed=6)
    for folder, dtype in ((save_hf(model, tmp_path / "hf"), torch.float32),
                          (save_native(model, tmp_path / "bf16", dtype=torch.bfloat16), torch.bfloat16)):  # fmt: skip
        loaded = loader.build_model(inspect_folder(folder), "cpu", dtype)
        for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
            assert b.dtype == dtype and torch.equal(a.to(dtype), b), name
    f32 = loader.build_model(inspect_folder(tmp_path / "bf16"), "cpu", torch.float32)  # bf16 file, float32 model
    assert torch.equal(f32.output.weight, model.output.weight.to(torch.bfloat16).float())
    with pytest.raises(ConfigError):
        args_from_hf_config({**json.loads((tmp_path / "hf" / "config.json").read_text()), "mlp_bias": True})


def test_template_option(hf_folder: Path) -> None:
    proc = _run("info", "--model", str(hf_folder), "--json", "--template", "v1")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["chat_template"] == "v1"
    # The v3 SentencePiece vocabulary has no [SYSTEM_PROMPT] controls: v7 cannot be written with it.
    _one_line_refusal(_run("info", "--model", str(hf_folder), "--template", "v7"), "[SYSTEM_PROMPT]")


def _peak_rss(code: str) -> int:
    """Peak resident bytes of a fresh interpreter running `code` (wait4 on that child alone)."""
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, proc.stderr.read() if proc.stderr else ""
    return usage.ru_maxrss * 1024


def test_loading_peaks_at_about_the_model(tmp_path: Path) -> None:
    """A 270 MB bf16 checkpoint: loading adds little beyond the weights (no mapped copy, no second copy).

    scripts/load_memory.py measures the same at 1 GB through the command line (the must-show figure).
    """
    args = ModelArgs(dim=1024, n_layers=4, head_dim=128, hidden_dim=4096, n_heads=8, n_kv_heads=8,
                     vocab_size=32768)  # fmt: skip
    folder = save_native(random_model(args, seed=0), tmp_path / "m", dtype=torch.bfloat16)  # 134M parameters
    shutil.copy(V3, folder / "tokenizer.model.v3")
    weights = (folder / "consolidated.safetensors").stat().st_size
    base = _peak_rss("import mixchat.runtime")
    for dtype in ("bfloat16", "auto" if runtime.cpu_has_bf16() else "bfloat16"):
        peak = _peak_rss(f"from mixchat.runtime import load_runtime; load_runtime({str(folder)!r}, 'cpu', {dtype!r})")
        extra = peak - base
        assert extra <= 1.1 * weights + 40e6, f"--dtype {dtype}: {extra / 1e6:.0f} MB for {weights / 1e6:.0f} MB"
