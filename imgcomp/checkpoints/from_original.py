"""`imgcomp convert ROOT JOB_ID -o OUT_ROOT`: a log dir of the original TensorFlow code written as
a log dir of ours (`OUT_ROOT/<JOB_ID> <ae> <pc>/ckpts/` with `ckpt-STEP.pt` and the flattened
configs), without TensorFlow."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from imgcomp.checkpoints import log_dirs as ckpt
from imgcomp.original.tf_bundle import TFCheckpointError
from imgcomp.original.tf_log_dirs import (
    TFLogDirError,
    configs_from_log_dir_name,
    is_tf_ckpt_dir,
    read_tf_state,
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="imgcomp convert", description=(
        "Convert a log dir written by the original TensorFlow code (ROOT/<JOB_ID> ...) into a "
        "log dir of ours (ckpt-STEP.pt + flattened configs), without TensorFlow."))
    p.add_argument("log_dir_root", help="folder holding the original's log dirs")
    p.add_argument("job_id", help="job id (MMDD_HHMM prefix of the log dir)")
    p.add_argument("-o", "--out_root", required=True, help="where the converted log dir goes")
    p.add_argument("--restore_itr", type=int, default=-1,
                   help="latest checkpoint with step <= this (-1: the latest)")
    args = p.parse_args(argv)
    try:
        log_dir = ckpt.find_log_dir(args.log_dir_root, args.job_id)
        ckpt_dir = log_dir / ckpt.CKPTS_DIRNAME
        if not is_tf_ckpt_dir(ckpt_dir):
            raise TFLogDirError(f"{log_dir} has no TF checkpoints (ckpt-STEP.index)")
        ae_cfg, pc_cfg = configs_from_log_dir_name(log_dir)
        state = read_tf_state(ckpt.checkpoint_path(ckpt_dir, args.restore_itr), ae_cfg, pc_cfg)
        out_dir = Path(args.out_root) / log_dir.name / ckpt.CKPTS_DIRNAME
        out_dir.mkdir(parents=True, exist_ok=True)
        ckpt.write_configs(out_dir, ae_cfg, pc_cfg)
        step = state["step"]
        path = ckpt.save_checkpoint(out_dir, step, {"model": state["model"]}, keep=0)
    except (ckpt.CheckpointError, TFLogDirError, TFCheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"Wrote {path} (step {step}) and its configs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
