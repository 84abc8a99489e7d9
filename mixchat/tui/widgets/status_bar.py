"""The status line: model, speed, time to first token, conversation name, experts per token, state."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

from rich.style import Style

from mixchat.tui.widgets.lines import Line, LineWidget


@dataclass(frozen=True)
class Status:
    model: str = ""
    conversation: str = "new conversation"
    tokens_per_second: float | None = None
    first_token: float | None = None
    experts: int | None = None  # experts per token in use (None: dense model)
    model_experts: int | None = None  # the model's own k
    n_experts: int | None = None
    state: str = "ready"
    colouring: str | None = None  # e.g. "colour: L3" when the transcript is coloured by expert
    timings: bool = True  # False: speed figures are hidden (deterministic screenshots, tests)
    unsaved: bool = False  # the last save failed: shown until a save succeeds


class StatusBar(LineWidget):
    COMPONENT_CLASSES: ClassVar[set[str]] = {"status-bar--key", "status-bar--warn", "status-bar--dim"}

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.status = Status()

    def set(self, **changes: object) -> None:
        new = replace(self.status, **changes)  # type: ignore[arg-type]
        if new != self.status:
            self.status = new
            self.invalidate()

    def text(self) -> str:
        """The line as plain text (tests read it)."""
        return "".join(t for t, _ in self.build(1000)[0])

    def build(self, width: int) -> Sequence[Line]:
        s = self.status
        key = self.style("status-bar--key")
        dim = self.style("status-bar--dim")
        warn = self.style("status-bar--warn")
        parts: list[tuple[str, Style | None]] = [(s.model, key), (s.conversation, None)]
        if s.timings:
            parts.append((f"{s.tokens_per_second:.1f} tok/s" if s.tokens_per_second is not None else "– tok/s", None))
            parts.append((f"first token {s.first_token:.2f} s" if s.first_token is not None else "first token –", dim))
        if s.experts is not None and s.n_experts is not None:
            if s.experts != s.model_experts:
                parts.append((f"experts {s.experts}/{s.n_experts} (model uses {s.model_experts})", warn))
            else:
                parts.append((f"experts {s.experts}/{s.n_experts}", dim))
        else:
            parts.append(("dense", dim))
        if s.colouring:
            parts.append((s.colouring, dim))
        if s.unsaved:
            parts.append(("NOT SAVED", warn))
        parts.append((s.state, key if s.state != "ready" else dim))
        line: Line = []
        for i, part in enumerate(parts):
            if i:
                line.append((" · ", dim))
            line.append(part)
        return [line]
