"""mixchat: a terminal chat app that runs Mistral/Mixtral models and shows their expert routing."""

import os
import signal
import sys

__version__ = "0.1.0"

# Set before any module imports xformers: it refuses to load its kernels when the installed flash-attention
# differs from the version it was built against, and mixchat probes the kernels itself (xformers_compat).
os.environ.setdefault("XFORMERS_IGNORE_FLASH_VERSION_CHECK", "1")

EARLY_SIGNALS: list[int] = []
"""Stop signals that arrived while the command line was still importing its modules (`mixchat/cli/signals.py`
takes them over: the command then ends quietly at its first check point instead of with a traceback)."""


def _early(signum: int, frame: object) -> None:
    EARLY_SIGNALS.append(signum)


# Only when this package is the program (`python -m mixchat`, the `mixchat` script), never when imported as
# a library: the first module Python imports for the command is this one, so this narrows the stretch in
# which Ctrl-C gives a traceback to the interpreter's own start-up.
if sys.argv and (sys.argv[0] == "-m" or os.path.basename(sys.argv[0]) == "mixchat"):
    for _name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, _name):
            signal.signal(getattr(signal, _name), _early)
