"""Console script `firstboot`."""

from __future__ import annotations

import sys

from firstboot.cli import main

if __name__ == "__main__":
    sys.exit(main())
