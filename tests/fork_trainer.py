"""Run by tests/test_interrupts.py: imports train.py's code once, then for each line of stdin
(`LOG_FILE<TAB>JSON list of train.py arguments`) forks a child that runs train.py's main
with its output in LOG_FILE, and prints the child's pid, then its wait status.

Forking from a process that has only imported (computed nothing, started no threads) is
safe, and saves each run the ~2 s of imports, and ~3 s of torch._dynamo that torch's Adam
imports when first made: the kill -9 test starts a dozen runs.
"""

import json
import os
import sys

import torch._dynamo  # noqa: F401

from imgcomp.train import run as train_run


def main() -> None:
    for line in sys.stdin:
        log_file, argv = line.rstrip("\n").split("\t", 1)
        pid = os.fork()
        if pid == 0:
            fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            code = train_run.main(json.loads(argv))
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        print(pid, flush=True)
        print(os.waitpid(pid, 0)[1], flush=True)


if __name__ == "__main__":
    main()
