"""val.py's command line, apart from what it runs: `imgcomp val --help` answers without
importing torch."""

from __future__ import annotations

import argparse

from imgcomp.base.arg_types import non_negative_int

# Exit status when some images could not be read and the others were measured (1: an error
# stopped the run; 2: bad flags).
EXIT_UNREADABLE = 3


def build_arg_parser() -> argparse.ArgumentParser:
    """The original val.py's flags (names, short forms, defaults) and the port's --device.
    Unknown flags are an error (the original printed "Unknown flags: ..." and went on)."""
    p = argparse.ArgumentParser(
        prog="val.py", description="Evaluate trained jobs: bpp, MS-SSIM and PSNR per image, "
        "written to measures.csv.", epilog=f"Exit status: 0 done; 1 error; "
        f"{EXIT_UNREADABLE} some images could not be read (named; the others are measured, "
        "and a re-run measures only the missing ones).")
    p.add_argument("log_dir_root", help="folder holding the jobs' log dirs")
    p.add_argument("job_ids", help="comma-separated job ids (MMDD_HHMM prefixes; ';' "
                   "separates them too)")
    p.add_argument("images", help="a folder of images, a quoted glob, 'kodak' "
                   "($VAL_ROOT/kodak/*.png) or 'samples' (photos bundled with scikit-image)")
    p.add_argument("--save_ours", "-o", action="store_true",
                   help="save the last validated checkpoint's reconstructions as PNG in "
                   "<out>/imgs/")
    p.add_argument("--how_many", type=int, metavar="N", help="only the first N images")
    p.add_argument("--image_cache_max", "-cache", type=int, metavar="MB",
                   help="accepted and ignored: the original cached decoded images up to MB "
                   "(default 500); this port reads each image when it measures it and "
                   "keeps none")
    p.add_argument("--restore_itr", "-i", type=int, metavar="STEP",
                   help="validate only the latest checkpoint with step <= STEP (-1: the "
                   "latest); overrides --ckpt_step")
    p.add_argument("--ckpt_step", "-s", type=int, default=2, metavar="S",
                   help="validate every S-th checkpoint plus the last (default 2; 1: all; "
                   "-1: only the last)")
    p.add_argument("--reset", action="store_true",
                   help="forget which checkpoints were validated and start over")
    p.add_argument("--real_bpp", action="store_true",
                   help="write real compressed files (bitstreams/), decode and check them, "
                   "and report real vs estimated bpp in real_bpp.csv")
    port = p.add_argument_group("flags of the port only")
    port.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    port.add_argument("--refine", type=non_negative_int, default=0, metavar="N",
                      help="encode-time refinement: optimize each image's latent for N steps "
                      "before coding (docs/refinement.md); results in '<JOB_ID> "
                      "<DATASET>_refine<N>/' (default 0: none)")
    return p
