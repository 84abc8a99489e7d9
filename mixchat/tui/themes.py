"""Colour themes as data: TOML files read with `tomllib`, turned into Textual themes.

Why data files rather than Python: users add their own themes without writing code (drop a `.toml` into
the config dir's `themes/` folder), and every theme must carry an expert palette, which the loader can
check. The expert colours become theme *variables* (`expert-0` ... `expert-N`), so CSS can use
`$expert-3` and widgets read the same values from `App.theme_variables`: one source for every colour.

Shipped themes live in the repository's top-level `themes/` folder; the wheel carries them as the package
data `mixchat/themes/*.toml` (see setup.py). User themes come from `<config dir>/themes/*.toml` and may
replace a shipped theme of the same name.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textual.color import Color, ColorParseError, rgb_to_lab
from textual.theme import Theme

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

MIN_EXPERT_COLORS = 8
DEFAULT_THEME = "mixchat-dark"
_COLOR_KEYS = (
    "primary",
    "secondary",
    "warning",
    "error",
    "success",
    "accent",
    "foreground",
    "background",
    "surface",
    "panel",
    "boost",
)

# Fallback palettes for themes without expert colours (Textual's own themes): one tuned for dark
# backgrounds, one for light ones.
DARK_PALETTE = ("#ff6b6b", "#ffa94d", "#ffe066", "#69db7c", "#38d9a9", "#4dabf7", "#9775fa", "#f783ac")
LIGHT_PALETTE = ("#c92a2a", "#c05600", "#8f6500", "#2b8a3e", "#0b7285", "#1864ab", "#6741d9", "#a61e4d")


class ThemeFileError(ValueError):
    """A theme file that cannot be used; the message is one line naming the file."""


@dataclass
class LoadedThemes:
    themes: dict[str, Theme]
    problems: list[str]  # one line per user theme file that was skipped


def shipped_theme_dirs() -> list[Path]:
    """Where the shipped themes are: inside an installed wheel, or the top-level folder of a checkout."""
    package = Path(__file__).resolve().parent.parent  # .../mixchat
    return [d for d in (package / "themes", package.parent / "themes") if d.is_dir()]


def expert_variable(i: int) -> str:
    return f"expert-{i}"


def parse_theme(data: dict[str, Any], source: str) -> Theme:
    """A Textual Theme from a theme file's parsed TOML; ThemeFileError if a required part is missing."""
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ThemeFileError(f'{source}: needs a name = "..."')
    if not isinstance(data.get("primary"), str):
        raise ThemeFileError(f"{source}: needs a primary colour")
    colors: dict[str, str] = {}
    for key in _COLOR_KEYS:
        value = data.get(key)
        if value is None:
            continue
        colors[key] = _checked_color(value, f"{source}: {key}")
    experts = data.get("experts", {})
    palette = experts.get("colors") if isinstance(experts, dict) else None
    if not isinstance(palette, list) or len(palette) < MIN_EXPERT_COLORS:
        raise ThemeFileError(f"{source}: [experts] colors must list at least {MIN_EXPERT_COLORS} colours")
    variables: dict[str, str] = {}
    extra = data.get("variables", {})
    if not isinstance(extra, dict):
        raise ThemeFileError(f'{source}: [variables] must be a table of name = "value"')
    variables.update({str(k): str(v) for k, v in extra.items()})
    for i, c in enumerate(palette):
        variables[expert_variable(i)] = _checked_color(c, f"{source}: expert colour {i}")
    dark = data.get("dark", True)
    if not isinstance(dark, bool):
        raise ThemeFileError(f"{source}: dark must be true or false")
    kwargs: dict[str, Any] = {}
    for key in ("luminosity_spread", "text_alpha"):
        if key in data:
            try:
                kwargs[key] = float(data[key])
            except (TypeError, ValueError):
                raise ThemeFileError(f"{source}: {key} must be a number") from None
    return Theme(name=name.strip(), dark=dark, variables=variables, **colors, **kwargs)  # type: ignore[arg-type]


def load_theme_file(path: Path) -> Theme:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ThemeFileError(f"{path}: cannot be read ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise ThemeFileError(f"{path}: not valid TOML ({e})") from None
    return parse_theme(data, str(path))


def load_themes(user_dirs: Iterable[Path] = ()) -> LoadedThemes:
    """Shipped themes, then user themes (which win on equal names). A broken shipped theme is a bug and
    raises; a broken user theme is skipped and reported."""
    themes: dict[str, Theme] = {}
    for folder in shipped_theme_dirs()[:1]:
        for path in sorted(folder.glob("*.toml")):
            theme = load_theme_file(path)
            themes[theme.name] = theme
    problems: list[str] = []
    for folder in user_dirs:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.toml")):
            try:
                theme = load_theme_file(path)
            except ThemeFileError as e:
                problems.append(f"theme skipped: {e}")
                continue
            themes[theme.name] = theme
    return LoadedThemes(themes, problems)


def expert_palette(variables: dict[str, str], dark: bool = True) -> list[str]:
    """The expert colours of the current theme variables, in order (fallback palette if it has none)."""
    out: list[str] = []
    while expert_variable(len(out)) in variables:
        out.append(variables[expert_variable(len(out))])
    if len(out) < MIN_EXPERT_COLORS:
        out = list(DARK_PALETTE if dark else LIGHT_PALETTE)
    return out


def default_variables(dark: bool) -> dict[str, str]:
    """Expert colour variables for themes that do not define them (Textual's built-in themes)."""
    palette = DARK_PALETTE if dark else LIGHT_PALETTE
    return {expert_variable(i): c for i, c in enumerate(palette)}


# ---- colour arithmetic the palette checks use (also used by the tests) -----------------------------------
def relative_luminance(color: Color) -> float:
    """WCAG 2 relative luminance of an sRGB colour."""

    def channel(c: int) -> float:
        s = c / 255
        return s / 12.92 if s <= 0.03928 else ((s + 0.055) / 1.055) ** 2.4

    return 0.2126 * channel(color.r) + 0.7152 * channel(color.g) + 0.0722 * channel(color.b)


def contrast_ratio(a: Color, b: Color) -> float:
    la, lb = sorted((relative_luminance(a), relative_luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def lab_distance(a: Color, b: Color) -> float:
    """CIE76 colour difference (Delta E): about 2.3 is just noticeable, above 20 clearly different."""
    la, lb = rgb_to_lab(a), rgb_to_lab(b)
    return float(((la.L - lb.L) ** 2 + (la.a - lb.a) ** 2 + (la.b - lb.b) ** 2) ** 0.5)


def _checked_color(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ThemeFileError(f'{what} must be a colour string such as "#ff6b6b"')
    try:
        Color.parse(value)
    except ColorParseError:
        raise ThemeFileError(f"{what}: {value!r} is not a colour") from None
    return value
