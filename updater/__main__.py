"""`python3 -m updater`: see updater.cli."""

import sys

from updater.cli import main

sys.exit(main())
