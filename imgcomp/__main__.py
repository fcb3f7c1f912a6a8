"""python -m imgcomp COMMAND ...: the same as the `imgcomp` command (see imgcomp.cli)."""

import sys

from imgcomp.cli import main

sys.exit(main())
