"""``python -m skr``: the same entry point as the ``skr`` console script."""

from __future__ import annotations

import sys

from skr.shell.cli import main

if __name__ == "__main__":
    sys.exit(main())
