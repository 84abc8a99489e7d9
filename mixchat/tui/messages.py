"""Messages the background workers post to the UI thread, named in the past tense (what happened).

Workers never touch widgets: they run model code in a thread and describe the outcome with one of these.
Token messages carry a *batch* of tokens (see `streaming.TurnStreamer`), so a fast model does not flood the
UI with one message, one Markdown parse and one repaint per token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from textual.message import Message

from mixchat.tui.routing import RoutedToken

if TYPE_CHECKING:
    from mixchat.runtime import Runtime
    from mixchat.session import Conversation


class ModelLoadProgressed(Message):
    def __init__(self, stage: str, step: int, steps: int) -> None:
        super().__init__()
        self.stage = stage
        self.step = step
        self.steps = steps


class ModelLoaded(Message):
    """The model is ready and the first conversation (new or resumed) is open."""

    def __init__(
        self, runtime: Runtime, conversation: Conversation, problem: str | None, resumed: bool = False
    ) -> None:
        super().__init__()
        self.resumed = resumed
        self.runtime = runtime
        self.conversation = conversation
        self.problem = problem


class ModelLoadFailed(Message):
    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error  # one line


class PrefillProgressed(Message):
    def __init__(self, done: int, total: int) -> None:
        super().__init__()
        self.done = done
        self.total = total


class TokensGenerated(Message):
    """Tokens generated since the last message, with their text and routing, and the speed so far."""

    def __init__(self, tokens: list[RoutedToken], tokens_per_second: float | None, first_token: float | None) -> None:
        super().__init__()
        self.tokens = tokens
        self.text = "".join(t.text for t in tokens)
        self.tokens_per_second = tokens_per_second
        self.first_token = first_token  # seconds from Enter to the first token


@dataclass(frozen=True)
class CacheState:
    live: int  # tokens whose K/V are in the buffer
    capacity: int  # slots: the window size, or the max context of a full-attention model
    position: int  # absolute tokens seen
    wraps: int  # times the rolling buffer went round
    nbytes: int
    window: bool = True  # a sliding-window buffer (False: full attention up to `capacity`)
    # Models whose layers have windows of different sizes: the smallest layer's live tokens and slots (the
    # numbers above are the largest layer's); None when every layer has the same buffer.
    smallest_live: int | None = None
    smallest_capacity: int | None = None


class CacheChanged(Message):
    def __init__(self, state: CacheState) -> None:
        super().__init__()
        self.state = state


class GenerationFinished(Message):
    """A turn ended: normally, stopped (Esc), cancelled during pre-fill, or with an error."""

    def __init__(
        self,
        reason: str | None,
        replied: bool,
        error: str | None = None,
        saved_as: str | None = None,
        save_error: str | None = None,
        tokens_per_second: float | None = None,
    ) -> None:
        super().__init__()
        self.reason = reason  # "eos" | "length" | "cancelled" | None (error)
        self.replied = replied  # False: the turn was dropped (cancelled during pre-fill, or failed)
        self.error = error
        self.saved_as = saved_as
        self.save_error = save_error
        self.tokens_per_second = tokens_per_second


class ConversationOpened(Message):
    """A saved conversation was loaded (with its cache, or with a note that the cache is rebuilt)."""

    def __init__(self, conversation: Conversation | None, problem: str | None, error: str | None = None) -> None:
        super().__init__()
        self.conversation = conversation
        self.problem = problem
        self.error = error


class TurnUndone(Message):
    """The last turn was taken back (cache restored from the undo log, or rebuilt by pre-fill)."""

    def __init__(self, user_text: str, exact: bool, error: str | None = None, save_error: str | None = None) -> None:
        super().__init__()
        self.user_text = user_text  # goes back into the message box
        self.exact = exact  # False: the cache was rebuilt from the transcript (or will be, if cancelled)
        self.error = error
        self.save_error = save_error


class ConversationForked(Message):
    """The conversation was saved, then saved again under a new name, which it now goes on as."""

    def __init__(self, original: str | None, name: str | None, error: str | None = None) -> None:
        super().__init__()
        self.original = original
        self.name = name
        self.error = error
