#!/usr/bin/env python
"""Evaluate trained jobs: python val.py LOG_DIR_ROOT JOB_IDS IMAGES ... (see --help)."""

import sys

from imgcomp.evaluation.validation import main

if __name__ == "__main__":
    sys.exit(main())
