"""mixchat: a terminal chat app that runs Mistral/Mixtral models and shows their expert routing."""

import os

__version__ = "0.1.0"

# Set before any module imports xformers: it refuses to load its kernels when the installed flash-attention
# differs from the version it was built against, and mixchat probes the kernels itself (xformers_compat).
os.environ.setdefault("XFORMERS_IGNORE_FLASH_VERSION_CHECK", "1")
