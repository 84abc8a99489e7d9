"""Errors of the session layer. They are UserErrors: the CLI prints them as one line, never a traceback."""

from __future__ import annotations

from mixchat.errors import UserError


class ConversationError(UserError):
    """A conversation that cannot be found, named, read or written; the message is one line."""


class TranscriptError(ConversationError):
    """A transcript that cannot be used (unparsable, malformed, or from a newer mixchat).

    The files are left exactly as they are: a newer mixchat, or a person with an editor, may still read them.
    """
