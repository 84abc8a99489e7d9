"""Loading and writing checkpoints: safetensors only, Mistral-native or Hugging Face layout.

Weights are never unpickled: a `.pth`/`.bin` file is refused, because unpickling can run arbitrary code.
The model is built on the meta device, its storage allocated once in the target dtype, and each checkpoint
tensor is read into place one at a time, so peak memory is the model plus at most a single tensor.

Tensors are read with plain file reads at the offsets the safetensors header gives (the header itself is
checked by the safetensors library first), not through its memory map: pages of a mapped file count in the
process's resident set while they are mapped, so reading a 1 GB file through the map would show 2 GB at the
peak. A tensor whose dtype and shape already match its parameter is read straight into the parameter's
memory, with no temporary at all.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import FileIO
from pathlib import Path
from typing import ClassVar

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.overrides import TorchFunctionMode

from mixchat.checkpoint_config import args_from_hf_config, args_from_params, hf_config, read_json
from mixchat.errors import LoadError as LoadError  # re-exported
from mixchat.model.args import ConfigError, ModelArgs
from mixchat.model.stage import StageModel, StagePart
from mixchat.model.transformer import Transformer
from mixchat.quant.format import QuantSpec
from mixchat.quant.load import QuantFiller, split_part
from mixchat.quant.modules import quantize_modules

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# safetensors dtype names -> torch (the ones a checkpoint of this model may hold)
_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64,
    "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip
FLOAT_HEADER_DTYPES = ("F32", "BF16", "F16", "F64")  # safetensors' names; the weights are floats, nothing else
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pkl")
# Called after each tensor is copied into place: a front end may stop a long load there (its own exception,
# raised between two tensors, where nothing is half done). None: no check.
between_tensors: Callable[[], None] | None = None


@dataclass
class Checkpoint:
    """Where a model folder keeps its pieces."""

    folder: Path
    layout: str  # "mistral" or "hf"
    args: ModelArgs
    weight_files: list[Path]
    tokenizer_file: Path | None
    quant: QuantSpec | None = None  # the stored format of a quantized checkpoint (params.json "quantization")


def inspect_folder(folder: str | Path, max_context: int | None = None) -> Checkpoint:
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise LoadError(f"model folder not found: {folder}")
    if not folder.is_dir():
        if folder.suffix in PICKLE_SUFFIXES:
            raise LoadError(
                f"{folder.name} is a pickle checkpoint; mixchat loads only safetensors (pickle can run code)"
            )
        raise LoadError(f"not a folder: {folder} (give the folder that holds the model's files)")
    try:
        if (folder / "params.json").is_file():
            layout = "mistral"
            params = read_json(folder / "params.json")
            args = args_from_params(params)
            stored = QuantSpec.from_json(params["quantization"]) if "quantization" in params else None
            files = sorted(folder.glob("consolidated*.safetensors"))
        elif (folder / "config.json").is_file():
            layout = "hf"
            config = read_json(folder / "config.json")
            args = args_from_hf_config(config)
            stored = None
            files = _hf_weight_files(folder)
        else:
            raise LoadError(f"{folder} has no params.json (Mistral layout) or config.json (Hugging Face layout)")
    except ConfigError as e:
        raise LoadError(str(e)) from None
    if max_context:
        args.max_context = max_context
    if not files:
        pickles = [p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise LoadError(
                f"{folder} holds only pickle weights ({pickles[0]}); mixchat loads only safetensors "
                "(pickle can run code) - convert the checkpoint to safetensors first"
            )
        raise LoadError(f"{folder} has no .safetensors weights")
    return Checkpoint(folder, layout, args, files, find_tokenizer(folder), stored)


def quant_spec(ckpt: Checkpoint, requested: QuantSpec | None) -> QuantSpec:
    """The format a model is loaded in: `requested` (None: as stored), which a quantized checkpoint must match."""
    if ckpt.quant is None:
        return requested or QuantSpec()
    if requested is not None and requested != ckpt.quant:
        raise LoadError(
            f"{ckpt.folder.name} is stored as {ckpt.quant.label}; it cannot be loaded as {requested.label} "
            f"(leave --quant out, or quantize the full-precision checkpoint again)"
        )
    return ckpt.quant


def _hf_weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = read_json(index)["weight_map"]
        except (ConfigError, KeyError):
            raise LoadError(f"{index.name} is malformed (no weight_map)") from None
        names = sorted(set(weight_map.values()))
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise LoadError(f"{index.name} names {missing[0]}, which is not in {folder}")
        return [folder / n for n in names]
    return sorted(folder.glob("model*.safetensors"))


def find_tokenizer(folder: Path) -> Path | None:
    """The folder's tokenizer file: Tekken first (as mistral-common picks it), then SentencePiece."""
    for name in ("tekken.json", "tokenizer.model", "tokenizer.model.v3", "tokenizer.model.v1"):
        if (folder / name).is_file():
            return folder / name
    found = sorted(folder.glob("tokenizer.model.v*"))
    return found[0] if found else None


# ---- name mapping --------------------------------------------------------------------------------------
# Each mapping returns (parameter name, expert index or None, transform) for a checkpoint tensor name,
# or None for tensors the model does not use (e.g. rotary inv_freq buffers).
Target = tuple[str, int | None, Callable[[torch.Tensor], torch.Tensor] | None]

_NATIVE_EXPERT = re.compile(r"^layers\.(\d+)\.(?:feed_forward|block_sparse_moe)\.experts\.(\d+)\.(w[123])\.weight$")
_HF_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_HF_EXPERT = re.compile(r"^(?:block_sparse_moe|mlp)\.experts\.(\d+)\.(w[123])\.weight$")
_HF_SIMPLE = {
    "self_attn.v_proj.weight": "attention.wv.weight",
    "self_attn.o_proj.weight": "attention.wo.weight",
    "input_layernorm.weight": "attention_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "feed_forward.w1.weight",
    "mlp.down_proj.weight": "feed_forward.w2.weight",
    "mlp.up_proj.weight": "feed_forward.w3.weight",
    "block_sparse_moe.gate.weight": "feed_forward.gate.weight",
    "mlp.gate.weight": "feed_forward.gate.weight",
}


def _native_target(name: str) -> Target | None:
    m = _NATIVE_EXPERT.match(name)
    if m:
        return f"layers.{m[1]}.feed_forward.{m[3]}", int(m[2]), None
    name = name.replace(".block_sparse_moe.", ".feed_forward.")
    return name, None, None


def _unpermute(n_heads: int, head_dim: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Undo HF's q/k row order (half-split RoPE) back to Mistral's interleaved pairs."""

    def f(w: torch.Tensor) -> torch.Tensor:
        out_dim, in_dim = w.shape
        return w.view(n_heads, 2, head_dim // 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)

    return f


def _permute(n_heads: int, head_dim: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def f(w: torch.Tensor) -> torch.Tensor:
        out_dim, in_dim = w.shape
        return w.view(n_heads, head_dim // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)

    return f


def _hf_target(name: str, args: ModelArgs) -> Target | list[Target] | None:
    if name == "model.embed_tokens.weight":
        return "tok_embeddings.weight", None, None
    if name == "model.norm.weight":
        return "norm.weight", None, None
    if name == "lm_head.weight":
        return "output.weight", None, None
    m = _HF_LAYER.match(name)
    if not m:
        return None
    i, rest = m[1], m[2]
    p = f"layers.{i}."
    if rest == "self_attn.q_proj.weight":
        return p + "attention.wq.weight", None, _unpermute(args.n_heads, args.head_dim)
    if rest == "self_attn.k_proj.weight":
        return p + "attention.wk.weight", None, _unpermute(args.n_kv_heads, args.head_dim)
    if rest in _HF_SIMPLE:
        return p + _HF_SIMPLE[rest], None, None
    e = _HF_EXPERT.match(rest)
    if e:
        return p + f"feed_forward.{e[2]}", int(e[1]), None
    if rest == "mlp.experts.down_proj":  # transformers >= 5 fused layout
        return p + "feed_forward.w2", None, None
    if rest == "mlp.experts.gate_up_proj":
        return [
            (p + "feed_forward.w1", None, lambda w: w.chunk(2, dim=1)[0]),
            (p + "feed_forward.w3", None, lambda w: w.chunk(2, dim=1)[1]),
        ]
    return None


def _open_weights(path: Path):  # type: ignore[no-untyped-def]
    """safe_open, with the true reason when the file cannot even be opened (safetensors says "not found")."""
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise LoadError(f"{path.name} cannot be read ({e.strerror or e})") from None
    try:
        return safe_open(str(path), framework="pt")
    except Exception as e:
        raise LoadError(f"{path.name} is not a readable safetensors file ({_short(e)})") from None


@dataclass
class TensorEntry:
    """One tensor of a safetensors file, as its header describes it; `read` fetches its bytes."""

    path: Path
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int  # absolute byte offset in the file
    nbytes: int
    handle: FileIO | None = None  # open unbuffered (the reads go straight into the tensors)

    def read(self, into: torch.Tensor | None = None) -> torch.Tensor:
        """The tensor, read into `into` when that is a CPU tensor of the same dtype and shape, else fresh."""
        same = into is not None and into.device.type == "cpu" and into.dtype == self.dtype
        if into is not None and same and tuple(into.shape) == self.shape and into.is_contiguous():
            target = into
        else:
            target = torch.empty(self.shape, dtype=self.dtype)
        if self.nbytes:
            assert self.handle is not None
            self.handle.seek(self.offset)
            buffer = memoryview(target.reshape(-1).view(torch.uint8).numpy())  # type: ignore[arg-type]
            got = self.handle.readinto(buffer)
            if got != self.nbytes:
                raise LoadError(f"{self.path.name} is truncated (tensor {self.name!r})")
        return target


def read_header(path: Path) -> list[TensorEntry]:
    """The tensors of one safetensors file, from its header (validated by safetensors itself first)."""
    with _open_weights(path):  # the true reason when the file cannot be read at all
        pass
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
    except Exception as e:
        raise LoadError(f"{path.name} is not a readable safetensors file ({_short(e)})") from None
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _ST_DTYPES.get(info["dtype"])
        if dtype is None:
            raise LoadError(f"{path.name}: tensor {name!r} has dtype {info['dtype']}, which mixchat does not read")
        begin, end = info["data_offsets"]
        entries.append(TensorEntry(path, name, dtype, tuple(info["shape"]), 8 + n + begin, end - begin))
    return entries


def _iter_tensors(files: list[Path]) -> Iterator[TensorEntry]:
    for path in files:
        entries = read_header(path)
        with open(path, "rb", buffering=0) as handle:
            for entry in entries:
                entry.handle = handle
                yield entry
                entry.handle = None


def stored_dtype(ckpt: Checkpoint) -> torch.dtype:
    """The dtype that holds most of the checkpoint's floating-point bytes (what it was saved in)."""
    by_dtype: dict[torch.dtype, int] = {}
    for path in ckpt.weight_files:
        for e in read_header(path):
            if e.dtype.is_floating_point:
                by_dtype[e.dtype] = by_dtype.get(e.dtype, 0) + e.nbytes
    return max(by_dtype, key=lambda d: by_dtype[d]) if by_dtype else torch.float32


def weights_nbytes(ckpt: Checkpoint, dtype: torch.dtype) -> int:
    """Bytes the model's weights take in `dtype`, from the config alone (read before any weight is)."""
    total, _ = ckpt.args.param_counts()
    return total * dtype.itemsize


def _short(e: BaseException) -> str:
    return str(e).splitlines()[0][:160] if str(e) else type(e).__name__


class _SkipInit(TorchFunctionMode):
    """Module constructors run their weight initialisers; the loader overwrites every weight anyway.

    On the meta device `nn.init.normal_` (nn.Embedding's initialiser) computes nothing but imports torch's
    decomposition machinery (dynamo, sympy...): ~150 MB of resident memory for a model that is about to be
    overwritten. The mode is thread-local and lasts only while the skeleton is built.
    """

    _SKIP: ClassVar[set[Callable[..., torch.Tensor]]] = {
        torch.nn.init.normal_,
        torch.nn.init.uniform_,
        torch.nn.init.kaiming_uniform_,
        torch.nn.init.trunc_normal_,
    }

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func in self._SKIP:  # the tensor is the first argument, positional or not
            return args[0] if args else (kwargs or {})["tensor"]
        return func(*args, **(kwargs or {}))


def build_model(
    ckpt: Checkpoint,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    quant: QuantSpec | None = None,
) -> Transformer:
    """Materialise the whole model of `ckpt` on `device`; with a quantized `quant` (or a quantized checkpoint)
    the quantized matrices are allocated as codes only and filled tensor by tensor (`mixchat.quant.load`)."""
    spec = quant_spec(ckpt, quant)
    with torch.device("meta"), _SkipInit():
        model = Transformer(ckpt.args)
    known = set(dict(model.named_parameters()))
    check_headers(model, ckpt, known)  # before allocating: a config's sizes are checked against the file's
    model = model.to(dtype)
    quantize_modules(model, spec)
    model = model.to_empty(device=device)
    _load_weights(model, ckpt, known, spec)
    return model.eval().requires_grad_(False)


def check_files(ckpt: Checkpoint) -> None:
    """The files' tensor headers against the config, on a skeleton that allocates nothing. Run before the
    memory check: a wrong size in params.json is better named as such than as a model too big to load."""
    with torch.device("meta"), _SkipInit():
        model = Transformer(ckpt.args)
    check_headers(model, ckpt, set(dict(model.named_parameters())))


def build_stage(
    ckpt: Checkpoint,
    part: StagePart,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    quant: QuantSpec | None = None,
) -> StageModel:
    """Materialise one pipeline stage: only its layers (and embeddings / head where it owns them) are
    allocated, and only their tensors are read from the files, so a rank needs about 1/N of the memory."""
    spec = quant_spec(ckpt, quant)
    with torch.device("meta"), _SkipInit():
        model = StageModel(ckpt.args, part)
        known = {name for name, _ in Transformer(ckpt.args).named_parameters()}
    check_headers(model, ckpt, known)
    model = model.to(dtype)
    quantize_modules(model, spec)
    model = model.to_empty(device=device)
    _load_weights(model, ckpt, known, spec)
    return model.eval().requires_grad_(False)


def check_headers(model: torch.nn.Module, ckpt: Checkpoint, known: set[str]) -> None:
    """Every tensor's dtype and shape, from the files' headers, against the (not yet allocated) model.

    A config that claims a vocabulary of 10^12 would otherwise have mixchat try to allocate 256 TB before
    the first tensor is read; integer tensors would be cast to floats silently and talk nonsense.
    """
    params = dict(model.named_parameters())
    config = "params.json" if ckpt.layout == "mistral" else "config.json"
    for path in ckpt.weight_files:
        with _open_weights(path) as f:
            for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                base, part = split_part(name) if ckpt.quant is not None else (name, None)
                if part is not None:  # a quantized matrix's codes or scales: checked as they are read
                    continue
                targets = _native_target(base) if ckpt.layout == "mistral" else _hf_target(name, ckpt.args)
                if targets is None:
                    continue
                fused = isinstance(targets, list)
                items: list[Target] = targets if isinstance(targets, list) else [targets]
                for pname, expert, _ in items:
                    if pname not in params or pname not in known:
                        continue
                    piece = f.get_slice(name)
                    stored = piece.get_dtype()
                    if stored not in FLOAT_HEADER_DTYPES:
                        raise LoadError(
                            f"tensor {name!r} in {path.name} holds {stored} values; "
                            "mixchat loads floating-point weights only (F32, BF16, F16)"
                        )
                    if expert is not None and expert >= params[pname].shape[0]:
                        raise LoadError(
                            f"tensor {name!r} in {path.name} is expert {expert}, but {config} "
                            f"has {params[pname].shape[0]} experts"
                        )
                    expected = tuple(params[pname].shape)[0 if expert is None else 1 :]
                    shape = tuple(piece.get_shape())
                    if fused:
                        shape = (shape[0], shape[1] // 2, *shape[2:]) if len(shape) >= 2 else shape
                    if shape != expected:
                        raise LoadError(
                            f"tensor {name!r} in {path.name} has shape {shape}, but {config} makes it "
                            f"{expected} ({_sizes(ckpt.args)})"
                        )


def _sizes(args: ModelArgs) -> str:
    return (
        f"vocab_size {args.vocab_size}, dim {args.dim}, hidden_dim {args.hidden_dim}, "
        f"n_heads {args.n_heads}, n_kv_heads {args.n_kv_heads}, head_dim {args.head_dim}"
    )


def _finite(t: torch.Tensor, entry: TensorEntry) -> torch.Tensor:
    """`t`, after a check that a floating-point tensor just read holds no NaN or infinity (one pass over it,
    cheap next to the read; integer tensors, a quantized checkpoint's codes, have none to hold)."""
    if t.is_floating_point():
        # In blocks: the check's temporaries (a bf16 tensor is widened to float32 first) would otherwise add
        # four bytes per element of the largest tensor to the loader's peak memory.
        for block in t.reshape(-1).split(1 << 20):
            if not bool(torch.isfinite(block).all()):
                raise LoadError(f"tensor {entry.name!r} in {entry.path} holds NaN or infinite values")
    return t


def _load_weights(model: torch.nn.Module, ckpt: Checkpoint, known: set[str], spec: QuantSpec | None = None) -> None:
    """Copy every checkpoint tensor that `model` holds into place, one tensor at a time.

    `known` holds the parameter names of the whole model: a tensor that maps outside it is an error (for the
    native layout), one that maps inside it but not onto `model` belongs to another pipeline stage.
    """
    args = ckpt.args
    params = dict(model.named_parameters())
    filled: set[str] = set()
    expert_fill: dict[str, set[int]] = {}
    embed_source: TensorEntry | None = None
    n_exp = args.moe.num_experts if args.moe else 0
    filler = QuantFiller(model, spec, n_exp) if spec is not None and spec.quantized else None

    for entry in _iter_tensors(ckpt.weight_files):
        name = entry.name
        if between_tensors is not None:
            between_tensors()
        if name == "model.embed_tokens.weight":
            embed_source = entry
        base, part = split_part(name) if ckpt.quant is not None else (name, None)
        targets = _native_target(base) if ckpt.layout == "mistral" else _hf_target(name, args)
        if targets is None:
            continue
        for pname, expert, transform in targets if isinstance(targets, list) else [targets]:
            if pname not in known:
                if ckpt.layout == "mistral" and name.startswith(("layers.", "tok_", "norm", "output")):
                    raise LoadError(f"unexpected tensor {name!r} in {ckpt.folder.name} (does params.json match?)")
                continue
            if filler is not None and filler.claims(pname):
                if part is not None:
                    filler.fill_part(pname, expert, part, _finite(entry.read(), entry), name)
                else:
                    tensor = _finite(entry.read(), entry)
                    filler.fill(pname, expert, tensor if transform is None else transform(tensor), name)
                continue
            if part is not None:
                raise LoadError(f"tensor {name!r} is quantized, but {pname!r} is kept in full precision")
            if pname not in params:
                continue
            dest = params[pname].data if expert is None else params[pname].data[expert]
            if transform is None and entry.shape != tuple(dest.shape):
                raise LoadError(
                    f"tensor {name!r} has shape {entry.shape}, expected {tuple(dest.shape)} from the config"
                )
            tensor = entry.read(into=dest if transform is None else None)
            if transform is not None:
                try:
                    tensor = transform(tensor)
                except RuntimeError:
                    raise LoadError(f"tensor {name!r} has shape {tuple(tensor.shape)}, which does not fit") from None
            if tuple(tensor.shape) != tuple(dest.shape):
                raise LoadError(
                    f"tensor {name!r} has shape {tuple(tensor.shape)}, expected {tuple(dest.shape)} from the config"
                )
            if tensor is not dest:
                with torch.no_grad():
                    dest.copy_(tensor)
            del tensor
            _finite(dest, entry)
            if expert is None:
                filled.add(pname)
            else:
                expert_fill.setdefault(pname, set()).add(expert)
    for pname, got in expert_fill.items():
        if len(got) == n_exp:
            filled.add(pname)
    if "output.weight" in params and "output.weight" not in filled and embed_source is not None:
        config = read_json(ckpt.folder / "config.json")
        if config.get("tie_word_embeddings"):
            with torch.no_grad():
                with open(embed_source.path, "rb", buffering=0) as handle:
                    embed_source.handle = handle
                    params["output.weight"].data.copy_(embed_source.read())
                embed_source.handle = None
            filled.add("output.weight")
    tied = filler is not None and filler.claims("output.weight") and filler.missing_head()
    if tied and embed_source is not None and read_json(ckpt.folder / "config.json").get("tie_word_embeddings"):
        assert filler is not None
        with open(embed_source.path, "rb", buffering=0) as handle:
            embed_source.handle = handle
            filler.fill("output.weight", None, embed_source.read(), "model.embed_tokens.weight")
        embed_source.handle = None
    missing = [p for p in params if p not in filled] + (filler.missing() if filler is not None else [])
    if missing:
        raise LoadError(f"checkpoint lacks tensor {missing[0]!r} ({len(missing)} missing in all)")


# ---- writing -------------------------------------------------------------------------------------------
def native_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """The model's weights under Mistral-native names (experts unstacked)."""
    out: dict[str, torch.Tensor] = {}
    for name, p in model.state_dict().items():
        m = re.match(r"^(layers\.\d+\.feed_forward)\.(w[123])$", name)
        if m:
            for j in range(p.shape[0]):
                out[f"{m[1]}.experts.{j}.{m[2]}.weight"] = p[j].contiguous()
        else:
            out[name] = p.contiguous()
    return out


def save_native(
    model: Transformer, folder: str | Path, dtype: torch.dtype | None = None, shard_bytes: int | None = None
) -> Path:
    """params.json + consolidated.safetensors; with `shard_bytes`, weights over that size go into several
    `consolidated-0000i-of-0000n.safetensors` files of at most about that size each (whole tensors, in
    order), which `inspect_folder` reads as one checkpoint."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.cpu() for k, v in native_state_dict(model).items()}
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in state.items():
        n = t.numel() * t.element_size()
        if shard_bytes is not None and shards[-1] and size + n > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += n
    for i, part in enumerate(shards, 1):
        fname = (
            "consolidated.safetensors" if len(shards) == 1 else f"consolidated-{i:05d}-of-{len(shards):05d}.safetensors"
        )
        save_file(part, str(folder / fname))
    (folder / "params.json").write_text(json.dumps(model.args.to_params_json(), indent=2) + "\n")
    return folder


def hf_state_dict(model: Transformer, keep_device: bool = False) -> dict[str, torch.Tensor]:
    """The model's weights under Hugging Face Mistral/Mixtral names (q/k permuted for half-split RoPE).

    With `keep_device` the tensors stay where the model is (to build a transformers twin on a GPU)."""
    a = model.args
    out: dict[str, torch.Tensor] = {}
    rename = {v: k for k, v in _HF_SIMPLE.items() if not k.startswith("mlp.gate.")}
    for name, p in model.state_dict().items():
        if name == "tok_embeddings.weight":
            out["model.embed_tokens.weight"] = p
        elif name == "norm.weight":
            out["model.norm.weight"] = p
        elif name == "output.weight":
            out["lm_head.weight"] = p
        else:
            m = re.match(r"^layers\.(\d+)\.(.+)$", name)
            assert m
            pre, rest = f"model.layers.{m[1]}.", m[2]
            if rest == "attention.wq.weight":
                out[pre + "self_attn.q_proj.weight"] = _permute(a.n_heads, a.head_dim)(p)
            elif rest == "attention.wk.weight":
                out[pre + "self_attn.k_proj.weight"] = _permute(a.n_kv_heads, a.head_dim)(p)
            elif rest in ("feed_forward.w1", "feed_forward.w2", "feed_forward.w3"):
                for j in range(p.shape[0]):
                    out[pre + f"block_sparse_moe.experts.{j}.{rest[-2:]}.weight"] = p[j]
            elif a.moe is not None and rest == "feed_forward.gate.weight":
                out[pre + "block_sparse_moe.gate.weight"] = p
            else:
                out[pre + rename[rest]] = p
    return {k: v.contiguous() if keep_device else v.contiguous().cpu() for k, v in out.items()}


def save_hf(model: Transformer, folder: str | Path, shards: int = 1) -> Path:
    """Write config.json + model*.safetensors (with an index when sharded)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = hf_state_dict(model)
    (folder / "config.json").write_text(json.dumps(hf_config(model.args), indent=2) + "\n")
    if shards == 1:
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return folder
    names = list(state)
    per = -(-len(names) // shards)
    weight_map: dict[str, str] = {}
    for s in range(shards):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: state[n] for n in names[s * per : (s + 1) * per]}
        save_file(part, str(folder / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, fname))
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return folder


def random_model(args: ModelArgs, seed: int = 0, std: float = 0.02) -> Transformer:
    """A model with seeded random weights (tests, benchmarks of named shapes)."""
    g = torch.Generator().manual_seed(seed)
    model = Transformer(args)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval().requires_grad_(False)
