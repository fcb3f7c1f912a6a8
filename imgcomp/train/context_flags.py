"""`imgcomp train-context`'s command line, built without torch (its --help answers at once)."""

from __future__ import annotations

import argparse

from imgcomp.base.arg_types import positive_int
from imgcomp.checkpoints.log_dirs import DEFAULT_LOG_DIR_ROOT


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="imgcomp train-context",
        description="Train a context model on the symbols of a frozen model: its autoencoder "
        "and quantizer stay as they are (the reconstructions are identical), only the rate "
        "changes. The symbols of random training crops are computed once and cached. The "
        "result is a new log dir holding the same autoencoder and quantizer weights and the "
        "new context model (a new fingerprint: files of the old model decode with it only).")
    p.add_argument("model", help="the model whose autoencoder is frozen: a shipped name, a log "
                   "dir, or a known job id or fingerprint (as `imgcomp encode -m`)")
    p.add_argument("pc_config", help="the context model's config, e.g. pc_configs/gpu/frozen: "
                   "its kernel_size, arch_param__k, logits_relu and padding must be the "
                   "model's, arch_param__num_res_blocks at least the model's (its weights "
                   "start from the model's; added blocks start as the identity); lr_initial "
                   "and the DECAY schedule count epochs of the cached crops")
    p.add_argument("--data", nargs="+", required=True, metavar="SPEC",
                   help="training images: folders, quoted globs or imgnet_train (as train.py's "
                   "--dataset_train)")
    p.add_argument("--symbols", metavar="FILE.pt", help="the symbol cache: read if it holds "
                   "the symbols of this model, data and crops, else computed and written "
                   "(default: LOG_DIR_ROOT/symbols/<fingerprint>_c<crop>_e<epochs>_s<seed>.pt)")
    p.add_argument("--crop_size", type=positive_int, metavar="N",
                   help="random N x N crops (default: the model's training crop_size)")
    p.add_argument("--epochs", type=positive_int, default=1,
                   help="crops drawn per image of --data (default: 1)")
    p.add_argument("--steps", type=positive_int, default=500, help="training steps")
    p.add_argument("--batch_size", type=positive_int, default=8, help="crops per step")
    p.add_argument("--held_out", type=positive_int, default=32, metavar="N",
                   help="crops kept out of training to report the context model's bits on")
    p.add_argument("--log_interval", type=positive_int, default=100, metavar="STEPS",
                   help="report the held-out bits every so many steps")
    p.add_argument("--seed", type=int, default=0, help="seed of the crops and the batches")
    p.add_argument("--log_dir_root", default=DEFAULT_LOG_DIR_ROOT,
                   help=f"where the new log dir goes (default: {DEFAULT_LOG_DIR_ROOT})")
    return p
