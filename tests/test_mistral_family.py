"""The Mistral family as people download it today, shrunk: Nemo, Small 3.x, Ministral 8B, Mixtral 8x22B.

Each checkpoint keeps its published config's structure and the field values that change the maths
(head_dim != dim / n_heads for Nemo and Small, rope_theta 1e6 / 1e8, norm eps, per-layer windows for
Ministral, 8 experts top-2 for 8x22B, the real vocabulary size) with small dims and few layers, random
weights, and the real tokenizer file from mistral-common's data folder. The references are independent:
transformers (MistralForCausalLM / MinistralForCausalLM / MixtralForCausalLM, eager attention) for logits and
greedy ids, mistral-common for chat ids. The folder is loaded the way a user's is, through `load_runtime`.

Config values are written from the published config.json files (Mistral-Nemo-Instruct-2407,
Mistral-Small-24B-Instruct-2501, Ministral-8B-Instruct-2410, Mixtral-8x22B-Instruct-v0.1); only sizes shrink.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from mixchat.chat_template import Message, encode_chat, encode_reply, encode_turn, reply_suffix
from mixchat.engine import Engine, TokenGenerated
from mixchat.exec.executors import CpuExecutor, ModuleExecutor
from mixchat.loader import save_native
from mixchat.model.layout import fresh_layout
from mixchat.runtime import Runtime, load_runtime
from mixchat.sampling import SamplingSettings

transformers = pytest.importorskip("transformers")
pytest.importorskip("mistral_common")
from helpers.tekken_files import DATA, NEMO_TEKKEN, SMALL_TEKKEN, derived_tekken  # noqa: E402
from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage  # noqa: E402
from mistral_common.protocol.instruct.request import ChatCompletionRequest  # noqa: E402
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

TOL = 1e-4
WINDOW = 12  # Ministral's sliding window, shrunk from 32768
MAX_CONTEXT = 256


@dataclass
class Spec:
    """A published config, shrunk: the transformers class, its fields, and the tokenizer file to ship."""

    cls: str
    config: dict[str, Any]
    tokenizer: str  # a file in mistral-common's data folder, or "small-v7" (see helpers/tekken_files.py)
    template: str  # the chat-template version the tokenizer file implies
    smallest_window: int | None


COMMON = dict(hidden_act="silu", tie_word_embeddings=False, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)
SPECS = {
    # Nemo: hidden 5120, 40 layers, 32 heads / 8 kv, head_dim 128 (not 5120/32), ffn 14336, theta 1e6,
    # vocab 131072, no sliding window; tekken v3 (tekken_240718.json is Nemo's file).
    "nemo": Spec(
        "MistralForCausalLM",
        dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
             intermediate_size=96, rope_theta=1e6, vocab_size=131072, sliding_window=None,
             max_position_embeddings=1024000, model_type="mistral"),
        str(NEMO_TEKKEN), "v3", None,
    ),
    # Small 3.x: hidden 5120, 40 layers, 32 heads / 8 kv, head_dim 128 (not 160), ffn 32768, theta 1e8,
    # vocab 131072, no window; its tekken.json is template v7 (the vocabulary of tekken_240911.json).
    "small3": Spec(
        "MistralForCausalLM",
        dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2, head_dim=16,
             intermediate_size=128, rope_theta=1e8, vocab_size=131072, sliding_window=None,
             max_position_embeddings=32768, model_type="mistral"),
        "small-v7", "v7", None,
    ),
    # Ministral 8B: hidden 4096, 36 layers, 32 heads / 8 kv, head_dim 128, ffn 12288, theta 1e8, vocab 131072,
    # sliding_window 32768 on some layers and full attention on the others (`layer_types`); tekken v3.
    "ministral8b": Spec(
        "MinistralForCausalLM",
        dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
             intermediate_size=64, rope_theta=1e8, vocab_size=131072, sliding_window=WINDOW,
             layer_types=["full_attention", "sliding_attention", "sliding_attention", "sliding_attention"],
             max_position_embeddings=32768, model_type="ministral"),
        str(SMALL_TEKKEN), "v3", WINDOW,
    ),
    # Mixtral 8x22B: hidden 6144, 56 layers, 48 heads / 8 kv, head_dim 128, ffn 16384, 8 experts top-2,
    # theta 1e6, vocab 32768, no window; SentencePiece v3.
    "mixtral8x22b": Spec(
        "MixtralForCausalLM",
        dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2, head_dim=8,
             intermediate_size=64, num_local_experts=8, num_experts_per_tok=2, rope_theta=1e6, vocab_size=32768,
             sliding_window=None, max_position_embeddings=65536, model_type="mixtral"),
        "mistral_instruct_tokenizer_240323.model.v3", "v3", None,
    ),
}  # fmt: skip


@dataclass
class Family:
    name: str
    spec: Spec
    hf: Any
    folder: Path
    tokenizer_file: Path
    rt: Runtime

    @property
    def prompt_len(self) -> int:
        """Longer than the smallest window, so that it wraps (three times for Ministral)."""
        w = self.spec.smallest_window
        return 3 * w + 5 if w is not None else 41


def _build(name: str, root: Path) -> Family:
    spec = SPECS[name]
    cfg_cls = getattr(transformers, spec.cls.replace("ForCausalLM", "Config"))
    fields = {k: v for k, v in spec.config.items() if k != "model_type"}
    config = cfg_cls(**fields, **COMMON, initializer_range=0.02, attn_implementation="eager", pad_token_id=11)
    torch.manual_seed(14)
    hf = getattr(transformers, spec.cls)(config).eval()
    g = torch.Generator().manual_seed(15)
    with torch.no_grad():
        for pname, p in hf.named_parameters():
            if pname.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
    folder = root / name
    hf.save_pretrained(str(folder), safe_serialization=True)
    if spec.tokenizer == "small-v7":
        tokenizer_file = derived_tekken("v7", folder)
    else:
        source = Path(spec.tokenizer) if spec.tokenizer.endswith(".json") else DATA / spec.tokenizer
        tokenizer_file = folder / ("tekken.json" if source.suffix == ".json" else "tokenizer.model.v3")
        shutil.copy(source, tokenizer_file)
    rt = load_runtime(folder, device="cpu", dtype="float32", chunk_size=7, max_context=MAX_CONTEXT)
    return Family(name, spec, hf, folder, tokenizer_file, rt)


@pytest.fixture(scope="module")
def families(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Family]:
    built: dict[str, Family] = {}

    def get(name: str) -> Family:
        if name not in built:
            built[name] = _build(name, tmp_path_factory.mktemp("family"))
        return built[name]

    return get


@pytest.fixture(params=sorted(SPECS))
def fam(request: pytest.FixtureRequest, families: Callable[[str], Family]) -> Family:
    return families(request.param)


def _tokens(fam: Family, n: int, seed: int) -> list[int]:
    """A chat prompt (real template ids) padded with random ordinary ids to `n` tokens."""
    tok = fam.rt.tokenizer
    ids = encode_turn(tok, "Bonjour, 東京 🚀", first=True, system="Be brief.")
    g = torch.Generator().manual_seed(seed)
    # Past every special id (Tekken has 1000, SentencePiece v3 771), so no random id is a control token.
    ids += torch.randint(1000, tok.vocab_size, (n - len(ids),), generator=g).tolist()
    return ids[:n]


@torch.inference_mode()
def _hf_logits(fam: Family, tokens: list[int]) -> torch.Tensor:
    return fam.hf(torch.tensor([tokens]), use_cache=False).logits[0].float()  # [T, V]


def test_config_reads_as_published(fam: Family) -> None:
    a, c = fam.rt.model.args, fam.spec.config
    assert (a.dim, a.n_layers, a.n_heads, a.n_kv_heads, a.head_dim) == (
        c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    )  # fmt: skip
    assert a.rope_theta == c["rope_theta"] and a.vocab_size == c["vocab_size"]
    types = c.get("layer_types")
    expected = [WINDOW if t == "sliding_attention" else None for t in types] if types else [None] * a.n_layers
    assert a.layer_windows == expected
    assert fam.rt.tokenizer.version == fam.spec.template
    assert fam.rt.tokenizer.vocab_size <= a.vocab_size


def test_logits_match_transformers(fam: Family) -> None:
    tokens = _tokens(fam, fam.prompt_len, seed=1)
    ref = _hf_logits(fam, tokens)
    assert ref.abs().max() > 0.05, "logits must not be ~0 for the comparison to mean something"
    model = fam.rt.model
    with torch.inference_mode():
        ours = model(torch.tensor(tokens), fresh_layout([len(tokens)], model.args.layout_window, "cpu"))
    err = (ours - ref).abs().max().item()
    assert err <= TOL, f"max abs error vs transformers {err:.2e}"
    if fam.spec.smallest_window is not None:
        # The per-layer windows must matter: one window everywhere, or none, gives other logits.
        for wrong in (WINDOW, None):
            with torch.inference_mode():
                other = model(torch.tensor(tokens), fresh_layout([len(tokens)], wrong, "cpu"))
            assert (other - ref).abs().max().item() > 1e3 * TOL


def test_native_layout_matches_transformers(fam: Family, tmp_path: Path) -> None:
    """The same weights written as params.json + consolidated.safetensors (per-layer windows as a list)."""
    folder = save_native(fam.rt.model, tmp_path / "native")
    shutil.copy(fam.tokenizer_file, folder / fam.tokenizer_file.name)
    rt = load_runtime(folder, device="cpu", dtype="float32")
    assert rt.model.args.layer_windows == fam.rt.model.args.layer_windows
    assert rt.tokenizer.version == fam.spec.template
    tokens = _tokens(fam, fam.prompt_len, seed=5)
    with torch.inference_mode():
        ours = rt.model(torch.tensor(tokens), fresh_layout([len(tokens)], rt.model.args.layout_window, "cpu"))
    assert (ours - _hf_logits(fam, tokens)).abs().max().item() <= TOL


@pytest.mark.parametrize("executor", ["module", "runner"])
def test_chunked_packed_prefill_matches_transformers(
    fam: Family, executor: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two prompts of different lengths packed in each pass, fed in chunks of 7 and 5 through the cache
    (rolling buffers wrap for Ministral); every chunk's last logits against transformers' one pass."""
    model = fam.rt.model
    engine = Engine(
        model, fam.rt.tokenizer, executor=CpuExecutor(model) if executor == "runner" else ModuleExecutor(model)
    )
    prompts = [_tokens(fam, fam.prompt_len, seed=2), _tokens(fam, fam.prompt_len - 9, seed=3)]
    refs = [_hf_logits(fam, p) for p in prompts]
    steps = [7, 5]
    cache = engine.new_cache(2, max_context=MAX_CONTEXT)
    pos = [0, 0]
    while any(p < len(t) for p, t in zip(pos, prompts, strict=True)):
        rows = [r for r in range(2) if pos[r] < len(prompts[r])]
        chunks = [prompts[r][pos[r] : pos[r] + steps[r]] for r in rows]
        last = engine.forward(cache, rows, chunks)
        for j, r in enumerate(rows):
            pos[r] += len(chunks[j])
            err = (last[j] - refs[r][pos[r] - 1]).abs().max().item()
            assert err <= TOL, f"{executor}, row {r}, position {pos[r] - 1}: error {err:.2e}"


@pytest.mark.parametrize("executor", ["runner", "module", "graph-eager"])
def test_greedy_ids_match_transformers(fam: Family, executor: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIXCHAT_CPU_RUNNER", "1" if executor == "runner" else "0")
    monkeypatch.setenv("MIXCHAT_CUDA_GRAPHS", "eager" if executor == "graph-eager" else "0")
    prompt = _tokens(fam, fam.prompt_len, seed=4)
    n_new = 20
    with torch.inference_mode():
        fam.hf.generation_config.eos_token_id = None
        out = fam.hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=n_new, pad_token_id=11)
    ref = out[0, len(prompt) :].tolist()
    engine = Engine(fam.rt.model, fam.rt.tokenizer, chunk_size=10, eos_id=-1)
    if executor == "graph-eager":
        # The graph step holds one slot per row for all layers: per-layer windows fall back to the module.
        assert (engine.graph_decoder is None) == (fam.spec.smallest_window is not None)
    events = engine.generate([prompt], SamplingSettings(temperature=0.0, max_tokens=n_new))
    ours = [e.token for e in events if isinstance(e, TokenGenerated)]
    assert ours == ref


def _theirs(conversation: list[tuple[str, str]]) -> list[Any]:
    kinds = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}
    return [kinds[role](content=text) for role, text in conversation]


def _reference(fam: Family, conversation: list[tuple[str, str]]) -> list[int]:
    ref = MistralTokenizer.from_file(str(fam.tokenizer_file))
    return ref.encode_chat_completion(ChatCompletionRequest(messages=_theirs(conversation))).tokens


SYSTEM = "Answer in one line, please."
THREE_TURNS = [("user", "Capital of France?"), ("assistant", "Paris. "), ("user", "Of Japan? 東京?"),
               ("assistant", "Tokyo 🚀"), ("user", "[INST] Of Peru? [/INST]")]  # fmt: skip


def test_chat_ids_match_mistral_common(fam: Family) -> None:
    tok = fam.rt.tokenizer
    one = [("system", SYSTEM), ("user", "Name a prime.")]
    expected = _reference(fam, one)
    assert encode_chat(tok, [Message(r, t) for r, t in one]) == expected
    assert encode_turn(tok, "Name a prime.", first=True, system=SYSTEM) == expected

    whole = [("system", SYSTEM), *THREE_TURNS]
    assert encode_chat(tok, [Message(r, t) for r, t in whole]) == _reference(fam, whole)
    # What a conversation feeds its cache, turn by turn: the system prompt stays in the first turn.
    ids: list[int] = []
    for role, text in THREE_TURNS:
        if role == "user":
            ids += encode_turn(tok, text, first=not ids, system=SYSTEM)
        else:
            ids += encode_reply(tok, text) + reply_suffix(tok)
    if fam.spec.template == "v3":
        # By design (DESIGN.md 8): v3 moves the system prompt to the last user turn, which would change the
        # cached prefix every turn; mixchat keeps it in the first. Everything else must be identical: the
        # same conversation with the system prompt written into the first user message.
        folded = [("user", SYSTEM + "\n\n" + THREE_TURNS[0][1]), *THREE_TURNS[1:]]
        assert ids == _reference(fam, folded)
        assert ids != _reference(fam, whole)
    else:
        # v7+ keeps a system message where it stands: the start. No difference at all.
        assert ids == _reference(fam, whole)
