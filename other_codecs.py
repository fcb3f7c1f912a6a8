"""Measure classical codecs (Pillow's JPEG, WebP, JPEG 2000, AVIF) on a set of images; see
imgcomp/codecs.py.

    python other_codecs.py IMAGES [--codecs jpeg,webp,jp2k,avif] [--out OTHER_CODECS_ROOT]
"""

import sys

from imgcomp.evaluation.baselines import main

if __name__ == "__main__":
    sys.exit(main())
