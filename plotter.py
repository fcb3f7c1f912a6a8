#!/usr/bin/env python
"""Rate-distortion plot and BD-rates of validated jobs:
python plotter.py LOG_DIR_ROOT JOB_IDS DATASET (see --help)."""

import sys

from imgcomp.evaluation.plotting import main

if __name__ == "__main__":
    sys.exit(main())
