"""`python -m firstboot.register`: the same as `firstboot register`."""

import sys

from firstboot.register.args import main

sys.exit(main())
