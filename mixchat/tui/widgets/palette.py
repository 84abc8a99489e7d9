"""Expert colours as Rich styles, derived from the current theme's `expert-N` variables.

Widgets that draw routing build many small styled spans per repaint; resolving colours and blending them
with the background once per theme (and caching the styles per expert and weight step) keeps each repaint
cheap.
"""

from __future__ import annotations

from functools import lru_cache

from rich.style import Style
from textual.color import Color

from mixchat.tui.themes import expert_palette

WEIGHT_STEPS = 8  # weights are shaded in this many steps


def expert_char(e: int) -> str:
    """One character per expert id: 0-9, then a-z (enough for any released Mixtral)."""
    return "0123456789abcdefghijklmnopqrstuvwxyz"[e] if 0 <= e < 36 else "+"


class ExpertColours:
    def __init__(self, variables: dict[str, str], dark: bool) -> None:
        self.colors = [Color.parse(c) for c in expert_palette(variables, dark)]
        self.background = Color.parse(variables.get("surface", variables.get("background", "#000000")))
        self.foreground = Color.parse(variables.get("foreground", "#ffffff"))
        self.dark = dark
        self.cell = lru_cache(maxsize=1024)(self._cell)
        self.fg = lru_cache(maxsize=256)(self._fg)

    def color(self, e: int) -> Color:
        return self.colors[e % len(self.colors)]

    def _fg(self, e: int, bold: bool = False) -> Style:
        """Text in the expert's colour (transcript colouring, legends)."""
        return Style(color=self.color(e).rich_color, bold=bold)

    def _cell(self, e: int, step: int, strong: bool) -> Style:
        """A grid cell: background shaded from the panel colour to the expert colour by routing weight."""
        amount = 0.25 + 0.75 * step / WEIGHT_STEPS
        bg = self.background.blend(self.color(e), amount)
        return Style(bgcolor=bg.rich_color, color=bg.get_contrast_text(1.0).rich_color, bold=strong)

    def weight_step(self, w: float) -> int:
        return max(0, min(WEIGHT_STEPS, round(w * WEIGHT_STEPS)))
