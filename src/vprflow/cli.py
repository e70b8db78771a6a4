"""The ``vprflow`` command: ``vprflow serve BUNDLE_DIR`` (see ``vprflow.serve``)."""

from __future__ import annotations

import sys
from typing import Sequence

COMMANDS = {"serve": "serve a bundle built by the pipeline over HTTP (vprflow serve --help)"}


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        lines = "\n".join(f"  {name:8s} {help}" for name, help in COMMANDS.items())
        sys.exit(f"usage: vprflow COMMAND ...\ncommands:\n{lines}")
    from .serve.server import main as serve

    serve(argv[1:])
