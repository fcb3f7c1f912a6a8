"""train.py's command line: the original's flags (names, short forms, defaults, meaning), the
port's own, and how the restore flags resolve."""

from __future__ import annotations

import argparse

from imgcomp.base.arg_types import non_negative_float, positive_int
from imgcomp.checkpoints.log_dirs import DEFAULT_LOG_DIR_ROOT

# `--restore DIR` with these skipped, as the original's --from_identity (RestoreManager).
FROM_IDENTITY_SKIP_VARS = "global_step,Adam"
# --description appends to LOG_DIR/DESCRIPTION_NAME (the original sent it to a Google Sheet).
DESCRIPTION_NAME = "description.txt"


def build_arg_parser() -> argparse.ArgumentParser:
    """The original train.py's flags (same names, short forms, defaults and meaning) and,
    in their own group, the port's."""
    p = argparse.ArgumentParser(
        prog="train.py",
        description="Train the CVPR 2018 image codec (autoencoder + probability classifier).",
    )
    p.add_argument("ae_config", help="autoencoder config, e.g. ae_configs/cvpr/low")
    p.add_argument(
        "pc_config", help="probability classifier config, e.g. pc_configs/cvpr/res_shallow"
    )
    p.add_argument(
        "--dataset_train", "-dtrain", default="imgnet_train", metavar="DATASET",
        help="imgnet_train (TFRecords $RECORDS_ROOT/train/*.tfrecord; the default), a quoted "
        "glob or a directory of images",
    )
    p.add_argument("--dataset_test", "-dtest", default="imgnet_test", metavar="DATASET",
                   help="as --dataset_train; default imgnet_test ($RECORDS_ROOT/val)")
    p.add_argument(
        "--dataset_codec_distance", "-dcodec", metavar="DATASET",
        help="accepted and ignored (the original logged the test set's distance to BPG, from "
        "BPG measures this port does not have; its default was testset)",
    )
    p.add_argument("--log_dir_root", "-o", default=DEFAULT_LOG_DIR_ROOT, metavar="LOG_DIR_ROOT",
                   help=f"where the job's log dir is made (default {DEFAULT_LOG_DIR_ROOT}; "
                   "`imgcomp encode -m JOB_ID` finds the models there)")
    p.add_argument(
        "--log_interval_train", "-ltrain", type=positive_int, default=100, metavar="STEPS",
        help="console + TensorBoard train summaries every STEPS (default 100)",
    )
    p.add_argument(
        "--log_interval_save", "-lsave", type=positive_int, default=1000, metavar="STEPS",
        help="checkpoint every STEPS (default 1000)",
    )
    p.add_argument(
        "--log_interval_test", "-ltest", type=int, default=1000, metavar="STEPS",
        help="evaluate on the test set (qhard) every STEPS (default 1000); -1 (any value "
        "< 1): no testing, and the test set is not loaded",
    )
    p.add_argument("--log_run_metadata", "-lmeta", action="store_true",
                   help="accepted and ignored (TensorFlow run metadata)")
    p.add_argument("--summarize_gradients", "-lgrads", action="store_true",
                   help="accepted and ignored (the original ignored it too)")
    p.add_argument("--temporary", "-t", action="store_true",
                   help="append _TMP to LOG_DIR_ROOT")
    p.add_argument(
        "--from_identity", metavar="IDENTITY_CKPT_DIR",
        help=f"like --restore IDENTITY_CKPT_DIR --restore_skip_vars {FROM_IDENTITY_SKIP_VARS}: "
        "the weights only; step, schedules and optimizer states start afresh",
    )
    p.add_argument("--restore", "-r", metavar="RESTORE_DIR",
                   help="log dir or its ckpts/ to restore from; without --restore_continue "
                   "the new log dir's name ends in RESTORE@<root>@<job id>")
    p.add_argument(
        "--restore_itr", "-i", type=int, default=-1, metavar="STEP",
        help="restore the latest checkpoint with step <= STEP (-1, the default: the latest)",
    )
    p.add_argument(
        "--restore_continue", action="store_true",
        help="keep writing into the restored log dir instead of a new one; configs that "
        "differ from the log dir's are refused (see --restore_allow_config_change)",
    )
    p.add_argument(
        "--restore_skip_vars", metavar="A,B",
        help="do not restore variables whose name contains A or B: the model's parameter "
        "and buffer names (e.g. 'probclass', 'quantizer.centers'), 'global_step' (step and "
        "learning rate schedules then start at 0) and 'Adam_AE' / 'Adam_PC' (the optimizer "
        "states). Skipping anything starts the optimizer states afresh",
    )
    p.add_argument(
        "--ckpt_interval", type=non_negative_float, default=1.0, metavar="HOURS",
        help="besides the newest --keep_ckpts checkpoints, keep one checkpoint every HOURS "
        "(default 1): a checkpoint leaving that window is kept for good if it was written "
        ">= HOURS after the last one kept so (or after the run's start); 0 keeps them all",
    )
    p.add_argument("--description", "-d", metavar="TEXT",
                   help="appended to LOG_DIR/description.txt (the original sent it to a "
                   "Google Sheet)")
    port = p.add_argument_group("flags of the port only")
    port.add_argument("--max_steps", type=int, help="stop when the global step reaches this")
    port.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda"),
        help="auto (default) uses CUDA when present",
    )
    port.add_argument(
        "--bf16", action="store_true",
        help="bfloat16 autocast for the training forward's convolutions (loss, weights and "
        "Adam stay float32): 1.5-1.8x faster steps on a CPU with AVX512-BF16 (measured); "
        "see docs/performance.md",
    )
    port.add_argument("--num_workers", type=int, default=2, help="data loader processes")
    port.add_argument(
        "--num_test_batches", type=int, default=10, help="test batches per evaluation (default 10)"
    )
    port.add_argument(
        "--keep_ckpts", type=int, default=5,
        help="newest checkpoints kept in ckpts/ (default 5, 0 = all); see --ckpt_interval",
    )
    port.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    port.add_argument(
        "--restore_allow_config_change", action="store_true",
        help="with --restore_continue, continue with configs that differ from the log dir's "
        "(without it, such a run is refused with the list of changed keys); the old ones are "
        "kept as ckpts/ae_config.stepSTEP.old and ckpts/pc_config.stepSTEP.old and the "
        "change is logged in LOG_DIR/description.txt",
    )
    return p


def resolve_restore_flags(args: argparse.Namespace) -> list[str]:
    """Apply --from_identity (as the original's RestoreManager: it becomes --restore, with
    --restore_skip_vars global_step,Adam) and return the notes on accepted-but-ignored
    flags, one console line each."""
    notes = []
    if args.from_identity:
        if args.restore and args.restore != args.from_identity:
            notes.append(f"--from_identity {args.from_identity} replaces --restore "
                         f"{args.restore}")
        if args.restore_skip_vars and args.restore_skip_vars != FROM_IDENTITY_SKIP_VARS:
            notes.append(f"--from_identity: --restore_skip_vars {FROM_IDENTITY_SKIP_VARS} "
                         f"replaces {args.restore_skip_vars}")
        args.restore, args.restore_skip_vars = args.from_identity, FROM_IDENTITY_SKIP_VARS
    if args.restore_allow_config_change and not (args.restore and args.restore_continue):
        notes.append("--restore_allow_config_change has no effect without --restore and "
                     "--restore_continue")
    if args.dataset_codec_distance:
        notes.append("--dataset_codec_distance is ignored: the distance to BPG needs BPG "
                     "measures, which this port does not have")
    if args.log_run_metadata:
        notes.append("--log_run_metadata is ignored: TensorFlow run metadata has no "
                     "PyTorch counterpart here")
    if args.summarize_gradients:
        notes.append("--summarize_gradients is ignored (the original ignored it too)")
    if args.description:
        notes.append(f"--description goes to LOG_DIR/{DESCRIPTION_NAME}, not to a Google "
                     "Sheet")
    return notes


def restore_skip_vars(args: argparse.Namespace) -> list[str]:
    """--restore_skip_vars A,B as [A, B] (empty without the flag)."""
    return [s.strip() for s in (args.restore_skip_vars or "").split(",") if s.strip()]
