"""The engine: chunked pre-fill, decode, sampling, packed sequences, routing trace, cancellation.

Work is exposed as an iterator of events so every front end (CLI, REPL, TUI worker thread) consumes the
same stream and decides for itself what to show. Cancellation is checked between forward passes only, never
inside one, so the cache always describes whole passes.

Cache contract after a run: a sequence's cache holds its prompt and every generated token except the last
one. That last token is "pending": the caller feeds it first in the next run (a chat session prepends it to
the next turn). This keeps a stopped reply and the cache consistent without an extra forward pass.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch

from mixchat.cache import RollingCache
from mixchat.exec.choose import choose_executor
from mixchat.exec.executors import Executor, GraphExecutor, ModelLike
from mixchat.exec.graphs import GraphDecoder
from mixchat.exec.thread_choice import ThreadChooser
from mixchat.model.layers import Routing
from mixchat.sampling import Sampler, SamplingSettings

FinishReason = Literal["eos", "length", "cancelled"]
SMALL_MODEL_PARAMS = 200_000_000


DEFAULT_CHUNK_SIZE = 1024
"""Tokens per sequence per pre-fill pass unless a conversation says otherwise. Bigger passes run the same
maths with bigger matrix products: on the 2-core CPU VM a 1,000-token prompt pre-fills 7-10 % faster in one
1,024-token pass than in two of 512, and on a GPU the gain is larger. 1,024 still cuts a long paste into
several steps, each a progress update and a point where the user can cancel."""


@dataclass
class TokenRouting:
    """Per layer, the k experts chosen at the position that produced a token, and their weights."""

    experts: list[list[int]]  # [n_layers][k]
    weights: list[list[float]]  # [n_layers][k]

    def to_json(self) -> list[dict[str, list]]:
        pairs = zip(self.experts, self.weights, strict=True)
        return [{"experts": e, "weights": [round(w, 6) for w in ws]} for e, ws in pairs]


@dataclass
class PrefillProgressed:
    done: int  # tokens pre-filled so far, summed over sequences
    total: int


@dataclass
class TokenGenerated:
    seq: int
    token: int
    text: str  # new text to show (may be empty while a multi-byte character is incomplete)
    routing: TokenRouting | None


@dataclass
class CacheChanged:
    seq: int
    live: int  # tokens in the buffer
    capacity: int  # slots (window size, or max context)
    position: int  # absolute tokens seen
    wraps: int
    nbytes: int  # whole cache (all rows)


@dataclass
class RunStats:
    prompt_tokens: int = 0
    prefill_seconds: float = 0.0
    first_token_seconds: float = 0.0  # from the start of the run to the first sampled token
    decode_tokens: int = 0
    decode_seconds: float = 0.0

    @property
    def decode_tps(self) -> float:
        return self.decode_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0


@dataclass
class SequenceFinished:
    seq: int
    reason: FinishReason
    ids: list[int]  # generated ids, including a final end-of-sequence token
    stats: RunStats = field(default_factory=RunStats)


Event = PrefillProgressed | TokenGenerated | CacheChanged | SequenceFinished


class LastTokenRoutes(list[Routing]):
    """A `router_out` that asks for the routing at each sequence's last token only ([B, k] per layer).

    Pre-fill reports the routing of the position that produces the first token and nothing else; asking
    for just those rows lets the pass skip the last layer's work for every other token. It is a list type
    rather than a flag so that `Engine.forward` keeps its signature (callers and tests wrap it).
    """


@dataclass
class _PrefillPass:
    """A pre-fill pass started and not yet collected (see `Engine.prefill`)."""

    seqs: list[int]  # indices into the pre-fill's token lists, one per row of the pass
    ends: list[bool]  # whether this pass feeds that sequence's last chunk
    tokens: int
    collect: Callable[[], torch.Tensor]  # [len(seqs), vocab] last logits, once the pass has finished
    routing: list[Routing] | None  # filled when collected


class Engine:
    def __init__(
        self,
        model: ModelLike,
        tokenizer: object | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        eos_id: int | None = None,
        executor: Executor | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.chunk_size = chunk_size
        self.eos_id = eos_id if eos_id is not None else getattr(tokenizer, "eos_id", None)
        # Real checkpoints may have more output rows than the tokenizer has ids (Mistral pads its tables);
        # sampling stays within the tokenizer's ids, so a reply never holds an id nothing can decode.
        tok_vocab = getattr(tokenizer, "vocab_size", None)
        smaller = tok_vocab is not None and tok_vocab < model.args.vocab_size
        self.sample_vocab: int | None = tok_vocab if smaller else None
        # Small models' decode steps pick their thread count by timing themselves (see thread_choice.py);
        # big models and long chunks use every thread.
        total, _ = model.args.param_counts()
        small = total < SMALL_MODEL_PARAMS and self.device.type == "cpu"
        self.step_threads: ThreadChooser | None = ThreadChooser([1, torch.get_num_threads()]) if small else None
        self.max_threads: int | None = None  # a cap for every CPU pass (see leave_a_core_for_the_ui)
        # How passes run on this device (module forward, lean CPU path, CUDA graphs): decided once, here.
        self.executor: Executor = executor if executor is not None else choose_executor(model)

    def leave_a_core_for_the_ui(self) -> None:
        """From now on, CPU passes use one thread fewer than the machine has, and small decode steps one. A
        front end that redraws while the model runs (the TUI streams every token and a pre-fill progress bar)
        needs a core of its own: on the 2-core VM, with pre-fill on both cores, the UI thread stalled for up
        to half a second at a time."""
        if self.device.type != "cpu":
            return
        self.max_threads = max(1, torch.get_num_threads() - 1)
        if self.step_threads is not None:
            self.step_threads = ThreadChooser([1])

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def graph_decoder(self) -> GraphDecoder | None:
        """The CUDA-graph decoder when decode steps replay graphs (bench and checks report it)."""
        return self.executor.decoder if isinstance(self.executor, GraphExecutor) else None

    def new_cache(self, batch: int = 1, max_context: int | None = None) -> RollingCache:
        return RollingCache(self.model.args, batch, self.device, self.model.dtype, max_context=max_context)

    # ---- building blocks ------------------------------------------------------------------------------
    @torch.inference_mode()
    def forward(
        self,
        cache: RollingCache,
        rows: Sequence[int],
        chunks: Sequence[Sequence[int]],
        router_out: list[Routing] | None = None,
    ) -> torch.Tensor:
        """One pass feeding `chunks[i]` to cache row `rows[i]`; returns each sequence's last logits [B, V].

        `router_out` receives each layer's routing for every token of the pass, or, when it is a
        `LastTokenRoutes`, for each sequence's last token only.
        """
        layout = cache.plan([len(c) for c in chunks], rows)
        tokens = [t for c in chunks for t in c]
        last_only = isinstance(router_out, LastTokenRoutes)
        chooser = self.step_threads if len(tokens) <= 16 else None
        threads = chooser.pick(len(tokens)) if chooser is not None else self.max_threads
        start = time.perf_counter()
        with _threads(threads):
            logits = self.executor.forward(tokens, layout, cache, router_out, last_only)
        if chooser is not None and threads is not None:
            chooser.record(len(tokens), threads, time.perf_counter() - start)
        cache.advance(layout)
        return logits

    # Pre-fill passes that may be in flight at once. One here: a pass has finished when `forward` returns.
    # A pipeline streams its chunks (PipelineEngine), so that its stages work on different chunks at once.
    prefill_depth = 1

    def start_pass(
        self,
        cache: RollingCache,
        rows: Sequence[int],
        chunks: Sequence[Sequence[int]],
        router_out: list[Routing] | None = None,
    ) -> Callable[[], torch.Tensor]:
        """Start the pass `forward` would run and return what collects its logits. Here the pass runs now;
        an engine whose passes overlap (a pipeline's) returns before it has finished, with the cache already
        advanced, so that the next pass can be planned and started."""
        logits = self.forward(cache, rows, chunks, router_out)
        return lambda: logits

    def prefill(
        self,
        cache: RollingCache,
        rows: Sequence[int],
        token_lists: Sequence[Sequence[int]],
        cancel: threading.Event | None = None,
        final_routing: dict[int, TokenRouting] | None = None,
    ) -> Iterator[PrefillProgressed | torch.Tensor]:
        """Feed each list in passes of at most `chunk_size` tokens per sequence; all sequences share passes.

        Yields progress after every pass, then (unless cancelled) one tensor: the last logits per sequence,
        in `rows` order. With `final_routing`, it receives the routing at each sequence's last position.
        Up to `prefill_depth` passes are in flight: a chunk's logits matter only for the sequences it ends,
        so the next chunk need not wait for them. A cancel stops new passes; those in flight are finished.
        """
        if any(len(t) == 0 for t in token_lists):
            raise ValueError("nothing to pre-fill for one of the sequences")
        cache.check_room(rows, [len(t) for t in token_lists])  # for the whole pre-fill, before any pass
        in_flight: deque[_PrefillPass] = deque()
        try:
            yield from self._prefill_passes(cache, rows, token_lists, cancel, final_routing, in_flight)
        except GeneratorExit:  # closed by the consumer: finish what was started, as a cancel does
            for p in in_flight:
                p.collect()
            raise

    def _prefill_passes(
        self,
        cache: RollingCache,
        rows: Sequence[int],
        token_lists: Sequence[Sequence[int]],
        cancel: threading.Event | None,
        final_routing: dict[int, TokenRouting] | None,
        in_flight: deque[_PrefillPass],
    ) -> Iterator[PrefillProgressed | torch.Tensor]:
        """`prefill`'s loop: start passes while fewer than `prefill_depth` are in flight, else collect one."""
        total = sum(len(t) for t in token_lists)
        offsets = [0] * len(token_lists)
        last: list[torch.Tensor | None] = [None] * len(token_lists)
        done = 0
        cancelled = False
        while True:
            active = [i for i, t in enumerate(token_lists) if offsets[i] < len(t)]
            if active:  # a cancel that comes once every pass has started changes nothing
                cancelled = cancelled or (cancel is not None and cancel.is_set())
            if active and not cancelled and len(in_flight) < max(1, self.prefill_depth):
                chunks = [list(token_lists[i][offsets[i] : offsets[i] + self.chunk_size]) for i in active]
                routing = LastTokenRoutes() if final_routing is not None else None
                collect = self.start_pass(cache, [rows[i] for i in active], chunks, routing)
                for i, c in zip(active, chunks, strict=True):
                    offsets[i] += len(c)
                ends = [offsets[i] == len(token_lists[i]) for i in active]
                in_flight.append(_PrefillPass(active, ends, sum(len(c) for c in chunks), collect, routing))
                continue
            if not in_flight:
                break
            p = in_flight.popleft()
            logits = p.collect()
            if cancelled:
                continue  # finishing what was started; nothing more is reported
            for j, i in enumerate(p.seqs):
                if p.ends[j]:
                    last[i] = logits[j]
                    if final_routing is not None and p.routing:
                        final_routing[i] = _routing_rows(p.routing)[j]
            done += p.tokens
            yield PrefillProgressed(done, total)
        if not cancelled:
            yield torch.stack([x for x in last if x is not None])

    # ---- a whole run ------------------------------------------------------------------------------------
    def run(
        self,
        cache: RollingCache,
        rows: Sequence[int],
        token_lists: Sequence[Sequence[int]],
        settings: SamplingSettings,
        cancel: threading.Event | None = None,
        trace: bool = True,
    ) -> Generator[Event, None, None]:
        """Pre-fill `token_lists[i]` on top of row `rows[i]`, then generate until each sequence stops."""
        rows = list(rows)
        n = len(rows)
        start = time.perf_counter()
        stats = [RunStats(prompt_tokens=len(t)) for t in token_lists]
        sampler = Sampler(settings, self.device)
        decoders = [self._stream_decoder() for _ in range(n)]
        generated: list[list[int]] = [[] for _ in range(n)]

        traced = trace and self.model.args.moe is not None
        prefill_routing: dict[int, TokenRouting] | None = {} if traced else None
        logits: torch.Tensor | None = None
        with torch.inference_mode():
            for item in self.prefill(cache, rows, token_lists, cancel, prefill_routing):
                if isinstance(item, PrefillProgressed):
                    yield item
                    yield from self._cache_events(cache, rows)
                else:
                    logits = item
        if logits is None:  # cancelled during pre-fill
            for i in range(n):
                yield SequenceFinished(i, "cancelled", [], stats[i])
            return
        t_prefill = time.perf_counter() - start
        for s in stats:
            s.prefill_seconds = t_prefill

        live = list(range(n))
        routing_now = [prefill_routing[i] for i in range(n)] if prefill_routing else None
        while True:
            with torch.inference_mode():
                usable = logits if self.sample_vocab is None else logits[:, : self.sample_vocab]
                next_ids = sampler(usable).tolist()
            now = time.perf_counter()
            still: list[int] = []
            for j, i in enumerate(live):
                tok = int(next_ids[j])
                generated[i].append(tok)
                if len(generated[i]) == 1:
                    stats[i].first_token_seconds = now - start
                text = decoders[i].push(tok) if decoders[i] is not None else ""
                yield TokenGenerated(i, tok, text, routing_now[j] if routing_now is not None else None)
                if tok == self.eos_id:
                    yield from self._finish(i, "eos", generated, decoders, stats)
                elif len(generated[i]) >= settings.max_tokens:
                    yield from self._finish(i, "length", generated, decoders, stats)
                else:
                    still.append(i)
            live = still
            if not live:
                break
            if cancel is not None and cancel.is_set():
                for i in live:
                    yield from self._finish(i, "cancelled", generated, decoders, stats)
                break
            routing: list[Routing] | None = [] if traced else None
            t0 = time.perf_counter()
            logits = self.forward(cache, [rows[i] for i in live], [[generated[i][-1]] for i in live], routing)
            routing_now = _routing_rows(routing) if routing else None
            dt = time.perf_counter() - t0
            for i in live:
                stats[i].decode_tokens += 1
                stats[i].decode_seconds += dt
            yield from self._cache_events(cache, [rows[i] for i in live])

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        settings: SamplingSettings,
        trace: bool = True,
        cancel: threading.Event | None = None,
    ) -> Iterator[Event]:
        """Packed generation for independent prompts, one cache row each."""
        cache = self.new_cache(batch=len(prompts))
        yield from self.run(cache, list(range(len(prompts))), prompts, settings, cancel, trace=trace)

    # ---- helpers ----------------------------------------------------------------------------------------
    def _stream_decoder(self):  # type: ignore[no-untyped-def]
        if self.tokenizer is None:
            return None
        return self.tokenizer.stream()  # type: ignore[attr-defined]

    def _finish(self, i, reason, generated, decoders, stats) -> Iterator[Event]:  # type: ignore[no-untyped-def]
        if decoders[i] is not None:
            tail = decoders[i].flush()
            if tail:
                yield TokenGenerated(i, -1, tail, None)
        yield SequenceFinished(i, reason, generated[i], stats[i])

    def _cache_events(self, cache: RollingCache, rows: Sequence[int]) -> Iterator[CacheChanged]:
        for i, r in enumerate(rows):
            yield CacheChanged(i, cache.live(r), cache.capacity, cache.seen[r], cache.wraps(r), cache.nbytes)


def _routing_rows(layers: list[Routing]) -> list[TokenRouting]:
    """Every row's routing (decode: one per sequence), copied to the host in one transfer per tensor kind."""
    experts = torch.stack([r.experts for r in layers], 1).tolist()  # [B][L][k]
    weights = torch.stack([r.weights for r in layers], 1).tolist()
    return [TokenRouting(e, w) for e, w in zip(experts, weights, strict=True)]


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    if n is None or torch.get_num_threads() == n:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
