"""The `--device` flag of every entry point (train.py, val.py, `imgcomp encode|decode`)."""

from __future__ import annotations

import torch


def select_device(name: str) -> torch.device:
    """'auto': CUDA when present, else the CPU; 'cpu'; 'cuda'. Asking for CUDA where there is
    none ends the program with a one-line error (SystemExit), before any work is done."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is available")
    return torch.device(name)
