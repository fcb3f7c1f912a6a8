"""python -m imgcomp encode|decode ... (see imgcomp.cli)."""

import sys

from imgcomp.cli import main

sys.exit(main())
