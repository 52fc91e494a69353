"""`mgmtplane` console script and `python -m mgmtplane`."""

import sys

from mgmtplane.cli import main

if __name__ == "__main__":
    sys.exit(main())
