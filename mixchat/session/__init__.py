"""The session layer: conversations that keep one KV cache across turns, and their storage on disk.

Sits between the engine and the front ends (TUI, plain REPL). Never imports textual.
"""

from mixchat.session.conversation import ChatMessage, Conversation, ConversationStats, TurnStats
from mixchat.session.errors import ConversationError, TranscriptError
from mixchat.session.fingerprint import ModelFingerprint, fingerprint_files, fingerprint_model, fingerprint_runtime
from mixchat.session.settings import ChatSettings, SettingsError
from mixchat.session.store import ConversationInfo, ConversationStore, Loaded

__all__ = [
    "ChatMessage",
    "ChatSettings",
    "Conversation",
    "ConversationError",
    "ConversationInfo",
    "ConversationStats",
    "ConversationStore",
    "Loaded",
    "ModelFingerprint",
    "SettingsError",
    "TranscriptError",
    "TurnStats",
    "fingerprint_files",
    "fingerprint_model",
    "fingerprint_runtime",
]
