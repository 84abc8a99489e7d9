"""The errors a user can cause, at the bottom of the layering so every layer may raise them.

Each is printed as one line (`mixchat: error: ...`, exit status 2) by `cli.main.run_guarded`, the one
place that converts them; the TUI shows the same line. A module raises the most specific class here and
never formats its own exit.
"""

from __future__ import annotations


class UserError(RuntimeError):
    """Bad input from the user (an option, a file, a conversation): one line, exit status 2."""


class ConfigError(UserError, ValueError):
    """A params.json / config.json that mixchat cannot run as written."""


class LoadError(UserError):
    """A model folder whose files are missing, unreadable or do not fit together."""


class TokenizerError(UserError):
    """A tokenizer file that cannot be read or is of a kind mixchat does not know."""


class ContextFullError(UserError):
    """A full-attention conversation that has reached its cache's capacity."""
