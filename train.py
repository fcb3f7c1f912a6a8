#!/usr/bin/env python
"""Train the image codec: python train.py AE_CONFIG PC_CONFIG --dataset_train ... (see --help)."""

import sys

from imgcomp.train.run import main

if __name__ == "__main__":
    sys.exit(main())
