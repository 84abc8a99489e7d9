"""`python -m mixchat` (and `torchrun -m mixchat`) runs the same command line as `mixchat`."""

import sys

from mixchat.cli.main import main

sys.exit(main())
