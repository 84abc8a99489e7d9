"""What the routing panel shows, kept apart from how it is drawn.

The worker thread turns engine events into `RoutedToken`s; the UI thread appends them here and the
widgets read from here when they render. Plain Python, no Textual: the bookkeeping is easy to test and
cheap (a few list appends per token), which matters because it runs for every token while the model
streams.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class RoutedToken:
    """One generated token and the routing the engine reported for it."""

    token: int
    label: str  # a short printable label (tokenizer.token_text)
    text: str  # the text it added to the reply (may be empty mid-character)
    experts: tuple[tuple[int, ...], ...] | None  # [n_layers][k], strongest first; None: dense model / no trace
    weights: tuple[tuple[float, ...], ...] | None  # [n_layers][k]


class RoutingHistory:
    """The most recent routed tokens of a conversation, and per-layer expert counts over all of them.

    Only `keep` tokens are remembered for the grid and the detail view (a long conversation would
    otherwise grow without bound); the counts cover every token since the conversation was opened.
    """

    def __init__(self, n_layers: int, n_experts: int, keep: int = 4096) -> None:
        self.n_layers = n_layers
        self.n_experts = n_experts
        self.keep = keep
        self.tokens: deque[RoutedToken] = deque(maxlen=keep)
        self.first_index = 0  # conversation-wide index of tokens[0]
        self.counts: list[list[int]] = [[0] * n_experts for _ in range(n_layers)]
        self.counted = 0  # tokens whose routing is in `counts`
        self.version = 0  # bumped on every change, so widgets skip work when nothing is new

    @property
    def routed(self) -> bool:
        """True for mixture-of-experts models (there is something to show)."""
        return self.n_experts > 0

    @property
    def end_index(self) -> int:
        """Conversation-wide index one past the newest token."""
        return self.first_index + len(self.tokens)

    def add(self, items: list[RoutedToken]) -> None:
        for t in items:
            if len(self.tokens) == self.keep:
                self.first_index += 1
            self.tokens.append(t)
            if t.experts is not None:
                for layer, chosen in enumerate(t.experts[: self.n_layers]):
                    row = self.counts[layer]
                    for e in chosen:
                        if 0 <= e < self.n_experts:
                            row[e] += 1
                self.counted += 1
        if items:
            self.version += 1

    def get(self, index: int) -> RoutedToken | None:
        """The token at a conversation-wide index, if it is still remembered."""
        i = index - self.first_index
        if 0 <= i < len(self.tokens):
            return self.tokens[i]
        return None

    def drop_last(self, n: int) -> None:
        """Forget the newest `n` tokens (an undone or retried reply), counts included.

        If some of them were already pushed out of the remembered window (a reply longer than `keep`), the
        counts can no longer be corrected token by token, so the history starts afresh instead.
        """
        if n <= 0:
            return
        if n > len(self.tokens):
            self.clear()
            return
        for _ in range(n):
            t = self.tokens.pop()
            if t.experts is not None:
                for layer, chosen in enumerate(t.experts[: self.n_layers]):
                    row = self.counts[layer]
                    for e in chosen:
                        if 0 <= e < self.n_experts:
                            row[e] -= 1
                self.counted -= 1
        self.version += 1

    def clear(self) -> None:
        self.tokens.clear()
        self.first_index = 0
        self.counts = [[0] * self.n_experts for _ in range(self.n_layers)]
        self.counted = 0
        self.version += 1

    def share(self, layer: int) -> list[float]:
        """Fraction of the routing choices at `layer` that went to each expert (sums to 1 when counted)."""
        row = self.counts[layer]
        total = sum(row)
        return [c / total if total else 0.0 for c in row]
