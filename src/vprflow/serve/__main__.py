"""``python -m vprflow.serve BUNDLE_DIR [options]``: the same as ``vprflow serve``."""

from .server import main

main()
