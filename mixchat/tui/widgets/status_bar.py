"""The status line: model, speed, time to first token, conversation name, experts per token, state."""

from __future__ import annotations

from dataclasses import dataclass, replace

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget


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


class StatusBar(Widget):
    COMPONENT_CLASSES = {"status-bar--key", "status-bar--warn", "status-bar--dim"}

    status: reactive[Status] = reactive(Status)

    def set(self, **changes: object) -> None:
        self.status = replace(self.status, **changes)  # type: ignore[arg-type]

    def render(self) -> Text:
        s = self.status
        key = self.get_component_rich_style("status-bar--key")
        dim = self.get_component_rich_style("status-bar--dim")
        warn = self.get_component_rich_style("status-bar--warn")
        parts: list[Text] = [Text(s.model, style=key), Text(s.conversation)]
        if s.timings:
            tps = f"{s.tokens_per_second:.1f} tok/s" if s.tokens_per_second is not None else "– tok/s"
            ttft = f"first token {s.first_token:.2f} s" if s.first_token is not None else "first token –"
        else:
            tps, ttft = "tok/s hidden", "first token hidden"
        parts += [Text(tps), Text(ttft, style=dim)]
        if s.experts is not None and s.n_experts is not None:
            if s.experts != s.model_experts:
                parts.append(Text(f"experts {s.experts}/{s.n_experts} (model uses {s.model_experts})", style=warn))
            else:
                parts.append(Text(f"experts {s.experts}/{s.n_experts}", style=dim))
        else:
            parts.append(Text("dense", style=dim))
        if s.colouring:
            parts.append(Text(s.colouring, style=dim))
        parts.append(Text(s.state, style=key if s.state != "ready" else dim))
        return Text(" · ").join(parts)
