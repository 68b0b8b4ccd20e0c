"""The ``srvau`` command line (entry point ``srvau = "srvau.cli:app"``; ``python -m srvau.cli`` too).

``app.py`` holds the root app and its global options, ``context.py`` what every command shares (the
resolved params, logging, the stage's tracking run), and one module per command group. The CLI imports
the stage modules, never the reverse; heavy imports (torch, transformers) stay inside the command
functions so ``srvau --help`` stays fast.
"""

from srvau.cli.app import app

__all__ = ["app"]
