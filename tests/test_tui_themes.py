"""Themes are TOML data files: the shipped ones parse, have readable and distinct expert palettes, and
user themes from the config dir are added (broken ones skipped with a one-line reason)."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import pytest
from session_support import REPO
from textual.color import Color

from mixchat.tui.config import Prefs
from mixchat.tui.themes import (
    MIN_EXPERT_COLORS,
    ThemeFileError,
    contrast_ratio,
    expert_palette,
    lab_distance,
    load_theme_file,
    load_themes,
    shipped_theme_dirs,
)

THEME_FILES = sorted((REPO / "themes").glob("*.toml"))


def test_at_least_four_themes_ship_in_the_top_level_folder() -> None:
    assert len(THEME_FILES) >= 4
    assert shipped_theme_dirs()[0] == REPO / "themes" or (shipped_theme_dirs()[0] / THEME_FILES[0].name).is_file()
    assert {load_theme_file(p).name for p in THEME_FILES} <= set(load_themes().themes)


@pytest.mark.parametrize("path", THEME_FILES, ids=lambda p: p.stem)
def test_every_theme_has_a_readable_distinct_expert_palette(path: Path) -> None:
    theme = load_theme_file(path)
    background = Color.parse(theme.background or ("#000000" if theme.dark else "#ffffff"))
    palette = [Color.parse(c) for c in expert_palette(theme.variables, theme.dark)]
    assert len(palette) >= MIN_EXPERT_COLORS
    for i, c in enumerate(palette):
        # expert colours are used as text on the background (transcript colouring, load bars)
        assert contrast_ratio(c, background) >= 3.5, f"expert {i} is hard to read on the background"
    for (i, a), (j, b) in combinations(enumerate(palette), 2):
        assert lab_distance(a, b) >= 20, f"experts {i} and {j} look alike"


def test_user_themes_are_added_and_broken_ones_reported(tmp_path: Path) -> None:
    good = THEME_FILES[0].read_text().replace('name = "', 'name = "mine-', 1)
    (tmp_path / "mine.toml").write_text(good)
    (tmp_path / "broken.toml").write_text('name = "broken"\nprimary = "#123456"\n[experts]\ncolors = ["#fff"]\n')
    (tmp_path / "notoml.toml").write_text("this is = = not toml")
    loaded = load_themes([tmp_path])
    assert any(name.startswith("mine-") for name in loaded.themes)
    assert "broken" not in loaded.themes
    assert len(loaded.problems) == 2 and all("theme skipped" in p for p in loaded.problems)
    with pytest.raises(ThemeFileError, match="at least 8"):
        load_theme_file(tmp_path / "broken.toml")


def test_preferences_survive_damage(tmp_path: Path) -> None:
    assert Prefs.load(tmp_path) == Prefs()
    assert Prefs(theme="ember", panel=False).save(tmp_path) is None
    assert Prefs.load(tmp_path) == Prefs(theme="ember", panel=False)
    (tmp_path / "tui.json").write_text("{not json")
    assert Prefs.load(tmp_path) == Prefs()


def test_setup_ships_the_themes_folder_inside_the_package() -> None:
    setup = (REPO / "setup.py").read_text()
    assert '"mixchat.themes": "themes"' in setup and '"mixchat.themes": ["*.toml"]' in setup
