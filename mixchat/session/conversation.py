"""A conversation: its messages, its token ids and one KV cache that lives as long as it does (semantics 7).

Why the cache is kept rather than rebuilt: pre-filling a long conversation again for every turn costs time
proportional to its length, while only the new turn is new. So each turn feeds just the tokens the cache
has not seen yet: the previous reply's last token (the engine leaves it "pending", see `mixchat.engine`),
the EOS that closes that reply when the model did not write it itself (a reply stopped by cancel or by the
token limit), and the new user turn in the chat template.

The conversation's token ids (`ids`) are the ground truth, not the message texts: a reply is kept as the
exact ids that were sampled and shown, because re-encoding its text need not give the same ids. One
invariant ties the three together and is kept after every turn, cancel, error or rebuild:

    the cache holds exactly ids[:cache.seen[0]], and `pending` = ids[cache.seen[0]:]

A cache that has to be rebuilt (a resumed conversation whose cache file failed its checks) is therefore
just an empty cache with every id pending: the next turn pre-fills them all, in chunks, with progress
events, through the same code path as any other turn (or `prefill_pending` does it eagerly).

The system prompt goes into the first user turn (see `chat_template.encode_turn`), so later turns never
change the ids of earlier ones; changing it is only possible before the first turn.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import torch

from mixchat.cache import ContextFullError, RollingCache, UndoPoint
from mixchat.chat_template import Message, encode_reply, encode_turn, reply_suffix
from mixchat.engine import Engine, Event, PrefillProgressed, SequenceFinished, TokenGenerated, TokenRouting
from mixchat.exec.executors import ModelLike
from mixchat.session.errors import ConversationError
from mixchat.session.fingerprint import ModelFingerprint
from mixchat.session.settings import ChatSettings, SettingsError
from mixchat.session.undo import TurnRecord, UndoLog
from mixchat.tokenizer import Tokenizer

__all__ = ["ChatMessage", "Conversation", "ConversationStats", "TurnStats", "encode_transcript", "now_iso"]


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class ChatMessage:
    """A user turn or a reply, as text; replies also say why they ended and how many ids they hold."""

    role: str  # "user" or "assistant" (the system prompt lives in ChatSettings.system)
    content: str
    finish_reason: str | None = None  # replies: "eos", "length" or "cancelled"
    tokens: int | None = None  # replies: generated ids, EOS included


@dataclass
class TurnStats:
    """What the last turn cost and did; front ends show it."""

    prompt_tokens: int  # tokens pre-filled for the turn (pending + closing EOS + the user turn)
    reply_tokens: int
    prefill_seconds: float
    decode_tps: float
    finish_reason: str
    routing: list[TokenRouting] = field(default_factory=list)  # MoE: the experts behind each reply token


@dataclass
class ConversationStats:
    turns: int
    tokens: int  # ids of the conversation
    cached: int  # of which the cache has seen (the rest is pending)
    live: int  # tokens whose K/V are still in the buffer
    capacity: int  # slots per layer (window, or max context)
    window: int | None
    wraps: int
    cache_bytes: int
    prefilled_tokens: int  # fed through pre-fill by this object (a resumed conversation starts at 0)
    decoded_tokens: int  # fed through decode passes by this object
    experts_per_token: int | None
    last: TurnStats | None
    expert_usage: list[list[int]] | None  # [layer][expert]: how often each expert was chosen for the last reply
    # Per-layer windows: the smallest layer's slots (live / capacity above are the largest layer's); else None.
    smallest_capacity: int | None = None

    @property
    def fill(self) -> float:
        return self.live / self.capacity if self.capacity else 0.0


class Conversation:
    """One conversation bound to one loaded model (engine + tokenizer) and its live cache.

    Not thread-safe: one turn at a time. A front end runs `send` in a worker thread and cancels it
    through the `cancel` event, which the engine checks between forward passes.
    """

    def __init__(
        self,
        engine: Engine,
        tokenizer: Tokenizer,
        fingerprint: ModelFingerprint,
        settings: ChatSettings | None = None,
        *,
        name: str | None = None,
        model_name: str = "",
        messages: Sequence[ChatMessage] = (),
        ids: Sequence[int] = (),
        cache: RollingCache | None = None,
        conversation_id: str | None = None,
        created: str | None = None,
        updated: str | None = None,
    ) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.fingerprint = fingerprint
        self.settings = settings if settings is not None else ChatSettings()
        self.name = name
        self.model_name = model_name
        self.messages: list[ChatMessage] = list(messages)
        self.ids: list[int] = [int(i) for i in ids]
        self.cache = cache if cache is not None else engine.new_cache()
        if self.cache.batch != 1:
            raise ValueError("a conversation needs a cache with exactly one row")
        if self.cache.seen[0] > len(self.ids):
            raise ValueError("the cache has seen more tokens than the conversation holds")
        self.id = conversation_id or uuid.uuid4().hex
        self.created = created or now_iso()
        self.updated = updated or self.created
        self.dirty = False  # changed since the last save
        self.last: TurnStats | None = None
        self.prefilled_tokens = 0
        self.decoded_tokens = 0
        self.undo_log = UndoLog()  # the slots recent turns overwrote (see session/undo.py)
        self.next_attempt = 0  # set by retry: the next turn samples a new reply even with a fixed seed
        self.retries = 0  # how often the last turn's reply was sampled again

    @classmethod
    def from_runtime(cls, runtime: Any, settings: ChatSettings | None = None, name: str | None = None) -> Conversation:
        """A new, empty conversation on a `mixchat.runtime.Runtime`."""
        from mixchat.session.fingerprint import fingerprint_runtime

        return cls(
            runtime.engine,
            runtime.tokenizer,
            fingerprint_runtime(runtime),
            settings,
            name=name,
            model_name=runtime.name,
        )

    # ---- state ------------------------------------------------------------------------------------------
    @property
    def pending(self) -> list[int]:
        """Ids of the conversation that the cache has not seen yet (fed first by the next turn)."""
        return self.ids[self.cache.seen[0] :]

    @property
    def turns(self) -> int:
        return sum(1 for m in self.messages if m.role == "user")

    @property
    def model(self) -> ModelLike:
        return self.engine.model

    def transcript_messages(self) -> list[Message]:
        """System prompt (if any) + messages, in chat_template's terms."""
        head = [Message("system", self.settings.system)] if self.settings.system else []
        return head + [Message(m.role, m.content) for m in self.messages]

    def set_system(self, text: str | None) -> None:
        """Set the system prompt; only before the first turn, since it is part of the first turn's ids."""
        if self.messages:
            raise ConversationError("the system prompt can only change before the first turn; start a new conversation")
        self.settings.system = text or None

    def invalidate_cache(self) -> None:
        """Forget the cache: every id becomes pending and the next turn (or prefill_pending) rebuilds it."""
        self.cache.reset(0)
        self.undo_log.clear()  # its records lead back from a cache that is gone

    # ---- a turn -------------------------------------------------------------------------------------------
    def send(self, user_text: str, cancel: threading.Event | None = None) -> Iterator[Event]:
        """Add a user turn, pre-fill what the cache lacks, stream the reply as engine events.

        The conversation is updated when the iterator ends, including when the consumer stops early
        (closing the iterator counts as a cancel). A cancel during pre-fill leaves the conversation exactly
        as before the turn; a cancel during the reply keeps the partial reply, consistently in the
        transcript, the ids and the cache.
        """
        self.apply_settings()
        user_text = user_text.encode("utf-8", "replace").decode("utf-8")  # no lone surrogates in files
        tok = self.tokenizer
        new: list[int] = []
        if self.messages and self.messages[-1].role == "assistant" and self.ids and self.ids[-1] != tok.eos_id:
            new += reply_suffix(tok)  # the reply was stopped before the model closed it
        new += encode_turn(tok, user_text, first=not self.ids, system=self.settings.system)
        feed = self.pending + new
        # Taken for the most this turn can write (its reply is not written yet); trimmed to what it did write.
        undo = self.cache.undo_point(0, len(feed) + self.settings.max_tokens)
        attempt, self.next_attempt = self.next_attempt, 0
        sampling = self.settings.sampling(self.turns)
        if attempt and sampling.seed is not None:
            sampling.seed += 1_000_003 * attempt  # a retry with a seed: another sample, still reproducible
        trace = self.model.args.moe is not None

        generated: list[int] = []
        routing: list[TokenRouting] = []
        finish: SequenceFinished | None = None
        prefilled = 0
        outcome = "error"
        run = self.engine.run(self.cache, [0], [feed], sampling, cancel, trace=trace)
        try:
            for ev in run:
                if isinstance(ev, TokenGenerated):
                    if ev.token >= 0:
                        generated.append(ev.token)
                        if ev.routing is not None:
                            routing.append(ev.routing)
                elif isinstance(ev, PrefillProgressed):
                    prefilled = ev.done
                elif isinstance(ev, SequenceFinished):
                    finish = ev
                yield ev
            outcome = "done"
        except GeneratorExit:
            outcome = "closed"
            raise
        except ContextFullError:
            outcome = "context_full"  # raised while planning a pass, before it wrote anything
            raise
        finally:
            run.close()
            self._settle(outcome, user_text, new, generated, routing, finish, prefilled, undo, len(feed), attempt)

    def _settle(
        self,
        outcome: str,
        user_text: str,
        new: list[int],
        generated: list[int],
        routing: list[TokenRouting],
        finish: SequenceFinished | None,
        prefilled: int,
        undo: UndoPoint,
        fed: int,
        attempt: int = 0,
    ) -> None:
        """Bring messages, ids and cache into agreement after a turn, however it ended."""
        self.prefilled_tokens += prefilled
        if not generated:
            # Stopped during pre-fill (cancel, close, error): as if the turn had never been typed.
            self.cache.rollback(undo)
            return
        if outcome == "error":
            # A decode pass failed half-way and may have overwritten a live slot: drop the turn and let the
            # next one rebuild the cache from the ids, which are intact.
            self.invalidate_cache()
            return
        tok = self.tokenizer
        before = undo.seen
        ids_before, messages_before = len(self.ids), len(self.messages)
        self.ids += new + generated
        reason = finish.reason if finish is not None else ("length" if outcome == "context_full" else "cancelled")
        text_ids = generated[:-1] if generated[-1] == tok.eos_id else generated
        self.messages.append(ChatMessage("user", user_text))
        self.messages.append(ChatMessage("assistant", tok.decode(text_ids), reason, len(generated)))
        decoded = self.cache.seen[0] - before - fed
        self.decoded_tokens += max(0, decoded)
        stats = finish.stats if finish is not None else None
        self.last = TurnStats(
            prompt_tokens=fed,
            reply_tokens=len(generated),
            prefill_seconds=stats.prefill_seconds if stats else 0.0,
            decode_tps=stats.decode_tps if stats else 0.0,
            finish_reason=reason,
            routing=routing,
        )
        self.updated = now_iso()
        self.dirty = True
        self.retries = attempt
        if self.cache.keeps_undo_log:
            point = self.cache.trim(undo, self.cache.seen[0])
            self.undo_log.push(
                TurnRecord(point, self.cache.seen[0], ids_before, len(self.ids), messages_before, len(self.messages))
            )
        assert self.cache.seen[0] <= len(self.ids)

    def prefill_pending(self, cancel: threading.Event | None = None) -> Iterator[PrefillProgressed]:
        """Feed all pending ids but the last into the cache now (e.g. rebuilding a resumed conversation).

        The last one stays pending, as after any reply, so the next turn (or next_token_logits) has a token
        to start from. Cancelling part-way is harmless: the cache then holds a shorter prefix of the ids.
        """
        todo = self.pending[:-1]
        if not todo:
            return
        self.apply_settings()
        before = self.cache.seen[0]
        self.undo_log.clear()  # the cache moves on outside a turn: no record leads back from where it ends
        try:
            for item in self.engine.prefill(self.cache, [0], [todo], cancel):
                if isinstance(item, PrefillProgressed):
                    yield item
        finally:
            self.prefilled_tokens += self.cache.seen[0] - before

    @torch.inference_mode()
    def next_token_logits(self, extra: Sequence[int] = ()) -> torch.Tensor:
        """[V] logits for the token after ids (+ extra), from a copy of the cache; nothing here changes.

        For tests and inspection: the persistent cache must give what one pre-fill of all ids gives.
        """
        feed = self.pending + [int(t) for t in extra]
        if not feed:
            raise ValueError("the cache already holds every id; give at least one extra token")
        self.apply_settings()
        tmp = self.engine.new_cache(max_context=self.cache.capacity)
        if self.cache.seen[0]:
            tmp.restore(self.cache.snapshot(0))
        logits: torch.Tensor | None = None
        for item in self.engine.prefill(tmp, [0], [feed]):
            if isinstance(item, torch.Tensor):
                logits = item[0]
        assert logits is not None
        return logits

    def apply_settings(self) -> None:
        """Push chunk size and experts-per-token to the shared engine/model (another conversation may have
        changed them)."""
        self.settings.validate()
        self.engine.chunk_size = self.settings.chunk_size
        moe = self.model.args.moe
        if moe is not None:
            k = self.settings.experts_per_token or moe.num_experts_per_tok
            try:
                self.model.set_experts_per_token(k)
            except ValueError as e:
                raise SettingsError(str(e)) from None

    # ---- numbers for front ends ---------------------------------------------------------------------------
    def stats(self) -> ConversationStats:
        c = self.cache
        usage: list[list[int]] | None = None
        moe = self.model.args.moe
        if moe is not None and self.last is not None and self.last.routing:
            usage = [[0] * moe.num_experts for _ in range(self.model.args.n_layers)]
            for r in self.last.routing:
                for layer, experts in enumerate(r.experts):
                    for e in experts:
                        usage[layer][e] += 1
        return ConversationStats(
            turns=self.turns,
            tokens=len(self.ids),
            cached=c.seen[0],
            live=c.live(0),
            capacity=c.capacity,
            window=c.window,
            wraps=c.wraps(0),
            cache_bytes=c.nbytes,
            prefilled_tokens=self.prefilled_tokens,
            decoded_tokens=self.decoded_tokens,
            experts_per_token=getattr(self.model, "experts_per_token", None),
            last=self.last,
            expert_usage=usage,
            smallest_capacity=None if c.smallest_capacity == c.capacity else c.smallest_capacity,
        )


def encode_transcript(tok: Tokenizer, system: str | None, messages: Sequence[ChatMessage]) -> list[int]:
    """Ids of a conversation re-encoded from its text, laid out exactly as `Conversation.send` lays it.

    Only for transcripts whose ids cannot be used (made with another tokenizer, or damaged): sampled ids
    need not equal the encoding of their text, so this is a faithful fallback, not an identity.
    """
    ids: list[int] = []
    for i, m in enumerate(messages):
        if m.role == "user":
            if ids and ids[-1] != tok.eos_id:
                ids += reply_suffix(tok)
            ids += encode_turn(tok, m.content, first=not ids, system=system)
        elif m.role == "assistant":
            ids += encode_reply(tok, m.content)
            last = i == len(messages) - 1
            if m.finish_reason in (None, "eos") or not last:
                ids += reply_suffix(tok)
    return ids
