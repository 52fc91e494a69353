"""`python -m firstboot.register`: the same as `firstboot register`."""

import sys

from firstboot.register.client import main

sys.exit(main())
