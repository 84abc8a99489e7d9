"""Training loop for the built-in model: the project's own Transformer, AdamW, warm-up + cosine, bf16.

The same code runs a seconds-long smoke test on a CPU (in CI) and the real run on a GPU. It reads packed
token sets made by `mixchat.train.tokens.build_dataset` (safetensors; no corpus code or sentencepiece needed
on the training machine) and writes Mistral-native checkpoints that the app loads like any other model.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from mixchat.loader import save_native
from mixchat.model.args import ModelArgs, MoeArgs
from mixchat.model.layers import Routing
from mixchat.model.layout import fresh_layout
from mixchat.model.transformer import Transformer
from mixchat.train.tokens import load_packed


def _shape(dim: int, n_layers: int, hidden: int, vocab_size: int, dense: bool, head_dim: int = 32) -> ModelArgs:
    """Mixtral's design scaled down: 8 experts top-2, grouped-query attention (4:1), a 256-token window.

    The dense twin has one FFN twice as wide as an expert: with top-2 routing both models then have the
    same active parameters per token, which is the comparison the Mixtral paper makes.
    """
    return ModelArgs(
        dim=dim,
        n_layers=n_layers,
        head_dim=head_dim,
        hidden_dim=2 * hidden if dense else hidden,
        n_heads=dim // head_dim,
        n_kv_heads=dim // head_dim // 4,
        vocab_size=vocab_size,
        norm_eps=1e-5,
        rope_theta=10000.0,
        sliding_window=256,
        moe=None if dense else MoeArgs(num_experts=8, num_experts_per_tok=2),
    )


def v5_args(vocab_size: int, dense: bool = False) -> ModelArgs:
    """The v5 shape (18.1 M parameters, 36 MB in bf16), kept to compare against and to retrain v5."""
    return _shape(256, 8, 256, vocab_size, dense)


def builtin_args(vocab_size: int, dense: bool = False) -> ModelArgs:
    """The shipped shape since v6: 10 layers x dim 256, experts of hidden size 384: 29.5 M parameters
    (11.8 M active), 59.1 MB in bf16 (the limit is 64 MB).

    Why this size (docs/builtin/size.md has the arithmetic): the v6 corpus carries facts (24,600 defined
    words, capitals, quiz tables) and v5 was data-bound on chat alone, so the shape grows to what 64 MB holds
    (at most 31.9 M parameters in bf16). Of the shapes of that size measured, this one puts the most
    parameters into the experts, where facts are stored (23.6 M), with the fewest active per token, which
    makes it the cheapest to train in a GPU run's fixed time and to decode on the CPU (about 180 tokens per
    CPU-second on one thread, against 250 for v5; at least 60 tok/s is required). Attention is v5's.
    """
    return _shape(256, 10, 384, vocab_size, dense)


def smoke_args(vocab_size: int, dense: bool = False) -> ModelArgs:
    """A tiny shape for the CPU smoke run in CI (seconds)."""
    return ModelArgs(
        dim=32,
        n_layers=2,
        head_dim=8,
        hidden_dim=64 if dense else 32,
        n_heads=4,
        n_kv_heads=2,
        vocab_size=vocab_size,
        sliding_window=16,
        moe=None if dense else MoeArgs(8, 2),
    )


def _candidate(dim: int, n_layers: int, hidden: int, head_dim: int = 32) -> Callable[[int, bool], ModelArgs]:
    def make(vocab_size: int, dense: bool = False) -> ModelArgs:
        return _shape(dim, n_layers, hidden, vocab_size, dense, head_dim)

    return make


PRESETS: dict[str, Callable[[int, bool], ModelArgs]] = {
    "builtin": builtin_args,
    "v5": v5_args,
    "smoke": smoke_args,
    # other shapes weighed for v6 (scripts/builtin_size.py measures them; docs/builtin/size.md)
    "w320x9h320": _candidate(320, 9, 320, head_dim=40),
    "w384x6h384": _candidate(384, 6, 384, head_dim=48),
    "w320x10h320": _candidate(320, 10, 320, head_dim=40),
}
"""Model shapes by name (`mixchat train --preset NAME`)."""


@dataclass
class TrainConfig:
    dataset: Path
    out: Path
    preset: str = "builtin"  # a key of PRESETS
    dense: bool = False
    steps: int = 3000
    batch_size: int = 64
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup: int = 150
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    aux_coef: float = 0.01  # load-balancing loss weight (Switch-Transformer form)
    prompt_weight: float = 0.25  # user-side tokens teach English too, but replies matter most
    eval_every: int = 250
    eval_batches: int = 20
    seed: int = 0
    device: str = "auto"
    time_budget: float | None = None  # seconds of training; the step count is fixed from early steps' speed
    extra: dict = field(default_factory=dict)


SHIPPED_FILE_BYTES = 40_000_000
"""Largest weights file the trainer writes: the built-in model ships inside the source tree, where files
are kept under 45 MB (git hosts warn at 50 MB), so a larger model is written in several files."""

PROBE_STEPS = (10, 30)
"""With a time budget, steps 10..30 are timed (the first steps include warm-up work) and the run is cut to
the steps that fit. They lie inside the LR warm-up, so changing the total there changes no LR already used."""


def steps_for_budget(cfg: TrainConfig, seconds_per_step: float, elapsed: float) -> int:
    """Total steps that fit the time budget, given the time so far and the measured speed (never more than
    asked for, never fewer than the steps already done plus one evaluation interval)."""
    assert cfg.time_budget is not None
    left = max(0.0, cfg.time_budget - elapsed) * 0.97  # evaluations and the final save take a little
    fit = PROBE_STEPS[1] + int(left / seconds_per_step)
    return max(PROBE_STEPS[1] + 1, min(cfg.steps, fit))


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def load_balancing_loss(routing: list[Routing], n_experts: int) -> torch.Tensor:
    """Mean over layers of E * sum_e f_e * p_e: f_e the share of assignments to expert e, p_e its mean
    router probability. It is smallest when both are uniform, which keeps every expert in use."""
    total = torch.zeros((), device=routing[0].logits.device)
    for r in routing:
        probs = torch.softmax(r.logits.float(), dim=-1)  # [N, E]
        counts = torch.bincount(r.experts.reshape(-1), minlength=n_experts).float()
        f = counts / counts.sum()
        total = total + n_experts * (f * probs.mean(0)).sum()
    return total / len(routing)


def token_loss(
    model: Transformer, tokens: torch.Tensor, mask: torch.Tensor, routing: list[Routing] | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(weighted loss, summed reply-token loss, reply-token count) for a batch of packed rows."""
    B, L = tokens.shape
    inputs, targets, reply = tokens[:, :-1], tokens[:, 1:], mask[:, 1:]
    layout = fresh_layout([L - 1] * B, model.args.layout_window, tokens.device)
    logits = model(inputs.reshape(-1), layout, router_out=routing)  # [B*(L-1), V]
    ce = F.cross_entropy(logits, targets.reshape(-1), reduction="none")
    reply_f = reply.reshape(-1).float()
    return ce, (ce * reply_f).sum(), reply_f.sum()


class Trainer:
    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        if cfg.device == "auto":
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            self.device = torch.device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.train_tokens, self.train_mask = load_packed(cfg.dataset / "train.safetensors")
        self.held_tokens, self.held_mask = load_packed(cfg.dataset / "heldout.safetensors")
        # The last row of each set is padded; leave it out.
        self.train_tokens, self.train_mask = self.train_tokens[:-1], self.train_mask[:-1]
        stats = json.loads((cfg.dataset / "stats.json").read_text())
        vocab = int(stats["vocab_size"])
        self.args = PRESETS[cfg.preset](vocab, cfg.dense)
        self.model = Transformer(self.args).to(self.device)
        _init_weights(self.model, self.args)
        decay = [p for n, p in self.model.named_parameters() if "norm" not in n]
        no_decay = [p for n, p in self.model.named_parameters() if "norm" in n]
        fused = self.device.type == "cuda"
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr,
            betas=(0.9, 0.95),
            eps=1e-8,
            fused=fused,
        )
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if fused else _null()
        self.gen = torch.Generator().manual_seed(cfg.seed)
        cfg.out.mkdir(parents=True, exist_ok=True)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, self.train_tokens.shape[0], (self.cfg.batch_size,), generator=self.gen)
        return (
            self.train_tokens[idx].to(self.device, non_blocking=True),
            self.train_mask[idx].to(self.device, non_blocking=True),
        )

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        rows = min(self.held_tokens.shape[0] - 1, self.cfg.eval_batches * self.cfg.batch_size)
        tot_reply = tot_all = n_reply = n_all = 0.0
        E = self.args.moe.num_experts if self.args.moe else 0
        usage = torch.zeros(self.args.n_layers, max(E, 1))
        for s in range(0, rows, self.cfg.batch_size):
            toks = self.held_tokens[s : min(s + self.cfg.batch_size, rows)].to(self.device)
            mask = self.held_mask[s : min(s + self.cfg.batch_size, rows)].to(self.device)
            routing: list[Routing] | None = [] if E else None
            with self.autocast:
                ce, reply_sum, reply_n = token_loss(self.model, toks, mask, routing)
            tot_reply += reply_sum.item()
            n_reply += reply_n.item()
            tot_all += ce.sum().item()
            n_all += ce.numel()
            if routing:
                for li, r in enumerate(routing):
                    usage[li] += torch.bincount(r.experts.reshape(-1), minlength=E).cpu().float()
        self.model.train()
        self.last_usage = (usage / usage.sum(1, keepdim=True)).tolist() if E else []
        return {"heldout_reply_loss": tot_reply / max(n_reply, 1), "heldout_loss": tot_all / max(n_all, 1)}

    def save(self, folder: Path) -> None:
        save_native(self.model, folder, dtype=torch.bfloat16, shard_bytes=SHIPPED_FILE_BYTES)
        shutil.copy(self.cfg.dataset / "tokenizer.model", folder / "tokenizer.model")

    def run(self) -> dict:
        cfg = self.cfg
        log_path = cfg.out / "train_log.csv"
        fields = ["step", "tokens", "lr", "train_loss", "aux_loss", "heldout_loss", "heldout_reply_loss", "elapsed_s"]
        start = time.perf_counter()
        n_tok = 0
        self.model.train()
        summary: dict = {"config": {k: str(v) for k, v in asdict(cfg).items()}, "args": self.args.to_params_json()}
        with open(log_path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=fields)
            w.writeheader()
            run_loss = run_aux = 0.0
            step = 0
            probe_t0 = 0.0
            while step < cfg.steps:
                if cfg.time_budget is not None and step == PROBE_STEPS[0]:
                    probe_t0 = time.perf_counter()
                if cfg.time_budget is not None and step == PROBE_STEPS[1]:
                    per_step = (time.perf_counter() - probe_t0) / (PROBE_STEPS[1] - PROBE_STEPS[0])
                    cfg.steps = steps_for_budget(cfg, per_step, time.perf_counter() - start)
                    cfg.eval_every = min(cfg.eval_every, cfg.steps)
                    (cfg.out / "steps.json").write_text(json.dumps({"steps": cfg.steps, "seconds_per_step": per_step}))
                    print(
                        f"time budget {cfg.time_budget:.0f} s: {per_step:.3f} s/step, training {cfg.steps} steps",
                        flush=True,
                    )
                for g in self.opt.param_groups:
                    g["lr"] = lr_at(step, cfg)
                toks, mask = self.batch()
                routing: list[Routing] | None = [] if self.args.moe else None
                with self.autocast:
                    ce, _, _ = token_loss(self.model, toks, mask, routing)
                    weights = torch.where(mask[:, 1:].reshape(-1), 1.0, cfg.prompt_weight)
                    loss = (ce * weights).sum() / weights.sum()
                    moe = self.args.moe
                    aux = load_balancing_loss(routing, moe.num_experts) if routing and moe else torch.zeros(())
                    total = loss + cfg.aux_coef * aux
                self.opt.zero_grad(set_to_none=True)
                total.backward()
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                self.opt.step()
                n_tok += toks[:, 1:].numel()
                run_loss += loss.item()
                run_aux += float(aux.detach())
                last = step == cfg.steps - 1
                if (step + 1) % cfg.eval_every == 0 or last:
                    k = (step % cfg.eval_every) + 1
                    ev = self.evaluate()
                    row = {
                        "step": step + 1,
                        "tokens": n_tok,
                        "lr": f"{lr_at(step, cfg):.3e}",
                        "train_loss": f"{run_loss / k:.4f}",
                        "aux_loss": f"{run_aux / k:.4f}",
                        "heldout_loss": f"{ev['heldout_loss']:.4f}",
                        "heldout_reply_loss": f"{ev['heldout_reply_loss']:.4f}",
                        "elapsed_s": f"{time.perf_counter() - start:.1f}",
                    }
                    w.writerow(row)
                    fh.flush()
                    print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
                    run_loss = run_aux = 0.0
                step += 1
        elapsed = time.perf_counter() - start
        self.save(cfg.out / "model")
        summary.update(
            {
                "steps": cfg.steps,
                "tokens": n_tok,
                "seconds": round(elapsed, 1),
                "device": torch.cuda.get_device_name() if self.device.type == "cuda" else "cpu",
                "final": self.evaluate(),
                "expert_usage": self.last_usage,
                "params": dict(zip(("total", "active"), self.args.param_counts(), strict=True)),
            }
        )
        (cfg.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary


def _init_weights(model: Transformer, args: ModelArgs) -> None:
    """Small normal init; output projections scaled down with depth so the residual stream starts calm."""
    std = 0.02
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            elif name.endswith(("wo.weight", "w2", "w2.weight")):
                p.normal_(0.0, std / math.sqrt(2 * args.n_layers))
            else:
                p.normal_(0.0, std)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: object) -> None:
        return None
