"""MixchatApp: loads the model in a worker (with progress), then opens the chat screen.

The app owns what outlives a screen: the loaded runtime, the conversation store, the themes and the
remembered preferences (theme, panel on or off). Everything about the conversation itself lives in the
chat screen.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding, BindingType
from textual.screen import Screen

from mixchat.tui.config import Prefs, config_dir, user_theme_dir
from mixchat.tui.messages import ModelLoaded, ModelLoadFailed, ModelLoadProgressed
from mixchat.tui.screens.chat import ChatScreen
from mixchat.tui.screens.help import HelpScreen
from mixchat.tui.screens.loading import LoadingScreen
from mixchat.tui.themes import DEFAULT_THEME, default_variables, load_themes
from mixchat.tui.widgets.palette import ExpertColours


class MixchatApp(App[int]):
    CSS_PATH = Path(__file__).parent / "app.tcss"  # absolute: subclasses elsewhere find it too
    TITLE = "mixchat"
    BINDINGS: ClassVar[list[BindingType]] = [Binding("f1", "help", "help", show=False)]

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        runtime: Any | None = None,
        device: str = "auto",
        dtype: str = "auto",
        max_context: int | None = None,
        data_dir: str | Path | None = None,
        config: str | Path | None = None,
        resume: str | None = None,
        conversation: str | None = None,
        system: str | None = None,
        overrides: dict[str, Any] | None = None,
        theme: str | None = None,
        panel: bool | None = None,
        deterministic: bool = False,
        stream_interval: float | None = None,
        template: str | None = None,
        quant: Any | None = None,
    ) -> None:
        """`resume`: a conversation name, or "" for the most recent one. `conversation`: open NAME if it
        exists, else start a new one under NAME. `overrides`: ChatSettings fields to set.
        `deterministic`: no speed figures and no blinking cursor, so screenshots and snapshot tests are
        the same on every run. `stream_interval`: seconds between UI updates while a reply streams."""
        from mixchat.session import ConversationStore
        from mixchat.session.lock import LockHolder

        self._colours: tuple[str, ExpertColours] | None = None
        self._remember_theme = False  # only a theme chosen after start-up is remembered
        super().__init__()
        self.model_path = model
        self.runtime = runtime
        self.device_name = device
        self.dtype_name = dtype
        self.quant = quant  # a QuantSpec, or None: the weights as stored
        self.max_context = max_context
        self.template = template  # --template: the chat-template version, instead of the tokenizer's own
        self.store = ConversationStore(data_dir)
        self.locks = LockHolder(self.store.root)  # the open conversation is locked against other processes
        self.config_dir = config_dir(config)
        self.prefs = Prefs.load(self.config_dir)
        self.resume = resume
        self.conversation_name = conversation
        self.system = system
        self.overrides = dict(overrides or {})
        self.deterministic = deterministic
        self.stream_interval = stream_interval
        self.panel = panel if panel is not None else self.prefs.panel
        self.load_error: str | None = None
        loaded = load_themes([user_theme_dir(self.config_dir)])
        self.theme_problems = loaded.problems
        for t in loaded.themes.values():
            self.register_theme(t)
        wanted = theme or self.prefs.theme or DEFAULT_THEME
        if wanted not in self.available_themes:
            self.theme_problems.append(f"unknown theme {wanted!r}; using {DEFAULT_THEME}")
            wanted = DEFAULT_THEME
        self.theme = wanted

    # ---- themes and colours ------------------------------------------------------------------------------
    def get_theme_variable_defaults(self) -> dict[str, str]:
        """Expert colours for themes that do not define them (Textual's own), so every theme has them."""
        return default_variables(self.current_theme.dark)

    @property
    def expert_colours(self) -> ExpertColours:
        if self._colours is None or self._colours[0] != self.theme:
            variables = self.get_css_variables()
            self._colours = (self.theme, ExpertColours(variables, self.current_theme.dark))
        return self._colours[1]

    def watch_theme(self, theme: str) -> None:
        self._colours = None
        for screen in self.screen_stack:
            if isinstance(screen, ChatScreen):
                screen.repaint()
        if self._remember_theme and theme != self.prefs.theme:
            self.prefs.theme = theme
            problem = self.prefs.save(self.config_dir)
            if problem:
                self.notify(problem, severity="warning")

    def panel_changed(self, on: bool) -> None:
        self.prefs.panel = on
        problem = self.prefs.save(self.config_dir)
        if problem:
            self.notify(problem, severity="warning")

    # ---- start-up ------------------------------------------------------------------------------------------
    def on_mount(self) -> None:
        for problem in self.theme_problems:
            self.notify(problem, severity="warning", timeout=8)
        self._remember_theme = True
        if self.runtime is not None:
            self.push_screen(LoadingScreen("the conversation"))
        else:
            self.push_screen(LoadingScreen(str(self.model_path or "the built-in model")))
        self.load()

    @work(thread=True, exclusive=True, group="model", exit_on_error=False)
    def load(self) -> None:
        """Load the model (unless given) and open the first conversation, reporting each stage."""
        from mixchat.engine import Engine
        from mixchat.loader import LoadError, build_model, inspect_folder, quant_spec
        from mixchat.model.args import ConfigError
        from mixchat.runtime import (
            Runtime,
            UserError,
            check_memory,
            load_tokenizer,
            resolve_device,
            resolve_dtype,
            resolve_model_path,
        )
        from mixchat.session import ConversationError
        from mixchat.tokenizer import TokenizerError

        steps = 4
        try:
            rt = self.runtime
            if rt is None:
                start = time.perf_counter()
                self.post_message(ModelLoadProgressed("reading the model folder", 0, steps))
                device = resolve_device(self.device_name)
                ckpt = inspect_folder(resolve_model_path(self.model_path), max_context=self.max_context)
                spec = quant_spec(ckpt, self.quant)
                dtype = resolve_dtype(self.dtype_name, device, ckpt, spec.quantized)
                self.post_message(ModelLoadProgressed("loading the tokenizer", 1, steps))
                tok = load_tokenizer(ckpt, self.template)
                check_memory(ckpt, device, dtype)
                size = sum(f.stat().st_size for f in ckpt.weight_files) / 2**20
                self.post_message(
                    ModelLoadProgressed(f"loading the weights ({size:,.1f} MiB) on {device.type}", 2, steps)
                )
                net = build_model(ckpt, device, dtype, spec)
                rt = Runtime(ckpt, net, tok, Engine(net, tok), time.perf_counter() - start, spec)
            rt.engine.leave_a_core_for_the_ui()  # configuration only; the engine's work runs in workers
            self.post_message(ModelLoadProgressed("opening the conversation", 3, steps))
            conv, problem, resumed = self.first_conversation(rt)
            self.post_message(ModelLoadProgressed("ready", 4, steps))
            self.post_message(ModelLoaded(rt, conv, problem, resumed))
        except (UserError, LoadError, ConfigError, TokenizerError, ConversationError) as e:
            self.post_message(ModelLoadFailed(str(e)))
        except MemoryError:
            self.post_message(ModelLoadFailed("out of memory while loading the model (try --dtype bfloat16)"))
        except Exception as e:  # anything unforeseen: still one line, never a traceback
            self.post_message(ModelLoadFailed(f"{type(e).__name__}: {e}"))

    def first_conversation(self, rt: Any) -> tuple[Any, str | None, bool]:
        """The conversation to open at start-up: resumed, opened by name, or new."""
        from mixchat.runtime import UserError
        from mixchat.session import ChatSettings, Conversation, SettingsError
        from mixchat.session.files import clean_name

        moe = rt.model.args.moe
        k = self.overrides.get("experts_per_token")
        if k is not None and (moe is None or not 1 <= k <= moe.num_experts):
            limit = f"between 1 and {moe.num_experts}" if moe else "only for mixture-of-experts models"
            raise UserError(f"--experts-per-token is {limit}")
        target: str | None = None
        if self.resume is not None:
            target = self.resume or self.store.latest()
            if target is None:
                raise UserError(f"no saved conversation to resume in {self.store.root}")
        elif self.conversation_name is not None:
            name = clean_name(self.conversation_name)
            target = name if self.store.exists(name) else None
            if target is None:
                settings = ChatSettings(system=self.system or None, **self.overrides)
                conv = Conversation.from_runtime(rt, settings, name=name)
                self.locks.switch(conv.id, name)
                return conv, None, False
        try:
            if target is not None:
                self.locks.switch(self.store.read(target).id, target)  # one line if another process has it open
                loaded = self.store.load_for(rt, target)
                conv = loaded.conversation
                conv.settings = replace(conv.settings, **self.overrides)
                if self.system is not None and not conv.messages:
                    conv.set_system(self.system)
                return conv, loaded.problem, True
            settings = ChatSettings(system=self.system or None, **self.overrides)
            conv = Conversation.from_runtime(rt, settings)
            self.locks.switch(conv.id, "new conversation")
            return conv, None, False
        except SettingsError as e:
            raise UserError(str(e)) from None

    def on_model_load_progressed(self, message: ModelLoadProgressed) -> None:
        if isinstance(self.screen, LoadingScreen):
            self.screen.progressed(message.stage, message.step, message.steps)

    def on_model_loaded(self, message: ModelLoaded) -> None:
        self.runtime = message.runtime
        chat = ChatScreen(
            message.runtime,
            self.store,
            message.conversation,
            message.problem,
            resumed=message.resumed,
            panel=self.panel,
            deterministic=self.deterministic,
            stream_interval=self.stream_interval,
        )
        self.switch_screen(chat)

    def on_model_load_failed(self, message: ModelLoadFailed) -> None:
        self.load_error = message.error
        self.exit(return_code=2)

    # ---- app-wide actions ---------------------------------------------------------------------------------
    @property
    def chat_screen(self) -> ChatScreen | None:
        for screen in self.screen_stack:
            if isinstance(screen, ChatScreen):
                return screen
        return None

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        chat = self.chat_screen
        if chat is not None:
            for title, help_text, callback in chat.commands():
                yield SystemCommand(title, help_text, callback)
