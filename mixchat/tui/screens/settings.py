"""The settings screen: system prompt, sampling, max tokens, seed, chunk size, experts per token, theme.

Values are checked with `ChatSettings.validate` before anything changes, so a bad number is reported on
the screen instead of failing in the middle of the next turn. The result goes back to the chat screen,
which applies it (a new system prompt on a conversation that already has turns starts a new one, since
the prompt is part of the first turn's ids).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Footer, Input, Label, Select, TextArea

from mixchat.tui.keys import SETTINGS_KEYS, bindings


@dataclass(frozen=True)
class SettingsResult:
    settings: Any  # ChatSettings
    theme: str


class SettingsScreen(ModalScreen[SettingsResult | None]):
    BINDINGS = bindings(SETTINGS_KEYS, priority=True)

    def __init__(
        self,
        settings: Any,
        theme: str,
        themes: list[str],
        n_experts: int | None,
        model_experts: int | None,
        has_turns: bool,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.theme_name = theme
        self.themes = themes
        self.n_experts = n_experts
        self.model_experts = model_experts
        self.has_turns = has_turns

    def compose(self) -> ComposeResult:
        s = self.settings
        with Vertical(id="settings-box", classes="dialog"):
            yield Label("Settings", classes="dialog-title")
            with VerticalScroll(id="settings-form"):
                note = " (changing it starts a new conversation)" if self.has_turns else ""
                yield Label(f"System prompt{note}", classes="field-label")
                yield TextArea(s.system or "", id="system", soft_wrap=True, tab_behavior="focus", compact=True)
                with Horizontal(classes="field-row"):
                    yield self._field("Temperature", self._input(f"{s.temperature:g}", "temperature", "number"))
                    yield self._field("Top-p", self._input(f"{s.top_p:g}", "top_p", "number"))
                    yield self._field("Max tokens", self._input(str(s.max_tokens), "max_tokens", "integer"))
                with Horizontal(classes="field-row"):
                    seed = "" if s.seed is None else str(s.seed)
                    yield self._field("Seed (empty: random)", self._input(seed, "seed", "integer"))
                    yield self._field("Chunk size", self._input(str(s.chunk_size), "chunk_size", "integer"))
                    if self.n_experts:
                        current = s.experts_per_token or self.model_experts
                        options = [
                            (f"{k}" + (" (model)" if k == self.model_experts else ""), k)
                            for k in range(1, self.n_experts + 1)
                        ]
                        yield self._field(
                            "Experts per token",
                            Select(options, value=current, allow_blank=False, id="experts_per_token", compact=True),
                        )
                    else:
                        yield self._field("Experts per token", Label("dense model", classes="dim"))
                yield Label("Theme", classes="field-label")
                yield Select(
                    [(t, t) for t in self.themes], value=self.theme_name, allow_blank=False, id="theme", compact=True
                )
            yield Label("", id="settings-error")
            with Horizontal(classes="buttons"):
                yield Button("Save (Ctrl+S)", id="save", variant="primary", compact=True)
                yield Button("Cancel (Esc)", id="cancel", compact=True)
        yield Footer()

    @staticmethod
    def _input(value: str, field: str, kind: str) -> Input:
        return Input(value, id=field, type=kind, compact=True)  # type: ignore[arg-type]

    @staticmethod
    def _field(label: str, widget: Any) -> Vertical:
        return Vertical(Label(label, classes="field-label"), widget, classes="field")

    def on_mount(self) -> None:
        self.query_one("#temperature", Input).focus()

    @on(Button.Pressed, "#save")
    def action_save(self) -> None:
        from mixchat.session import SettingsError

        try:
            result = self.collect()
        except (SettingsError, ValueError) as e:
            self.query_one("#settings-error", Label).update(f"⚠ {e}")
            return
        self.dismiss(result)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)

    def collect(self) -> SettingsResult:
        from mixchat.session import SettingsError

        def number(field: str, kind: type, optional: bool = False) -> Any:
            text = self.query_one(f"#{field}", Input).value.strip()
            if not text and optional:
                return None
            try:
                return kind(text)
            except ValueError:
                raise SettingsError(f"{field.replace('_', ' ')}: {text!r} is not a number") from None

        k: int | None = None
        if self.n_experts:
            value = self.query_one("#experts_per_token", Select).value
            k = None if value == self.model_experts else int(value)  # type: ignore[arg-type]
        system = self.query_one("#system", TextArea).text.strip() or None
        settings = replace(
            self.settings,
            system=system,
            temperature=number("temperature", float),
            top_p=number("top_p", float),
            max_tokens=number("max_tokens", int),
            seed=number("seed", int, optional=True),
            chunk_size=number("chunk_size", int),
            experts_per_token=k,
        )
        settings.validate()
        theme = self.query_one("#theme", Select).value
        return SettingsResult(settings, str(theme))
