"""Interrupted training loses nothing: kill -9 at random moments and --restore_continue, Ctrl-C
finishing the step it interrupts, a second Ctrl-C exiting at once."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from imgcomp.checkpoints import log_dirs as ckpt
from imgcomp.train import loop as train_loop
from imgcomp.train import run as train_run
from imgcomp.train import trainer as trainer_module

ROOT = Path(__file__).resolve().parents[1]


class ForkTrainer:
    """train.py runs forked from tests/fork_trainer.py (imports paid once)."""

    def __init__(self, log_root: Path) -> None:
        self.log_root, self.runs, self.running = log_root, 0, None
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests/fork_trainer.py")], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, cwd=ROOT,
            env={**os.environ, "OMP_NUM_THREADS": "1"})

    def start(self, argv: list[str]) -> tuple[int, Path]:
        """(pid, its output file) of a new run; `wait` must follow."""
        self.runs += 1
        out = self.log_root / f"run{self.runs}.out"
        out.touch()
        self.proc.stdin.write(f"{out}\t{json.dumps(argv)}\n")
        self.proc.stdin.flush()
        self.running = int(self.proc.stdout.readline())
        return self.running, out

    def wait(self) -> int:
        """The wait status of the last run."""
        status = int(self.proc.stdout.readline())
        self.running = None
        return status

    def close(self) -> None:
        if self.running is not None:  # a failed test left it running
            os.kill(self.running, signal.SIGKILL)
            self.wait()
        self.proc.kill()  # it only waits for commands: no need to pay its interpreter's exit
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def fork_trainer(tmp_path_factory) -> Iterator[ForkTrainer]:
    server = ForkTrainer(tmp_path_factory.mktemp("runs"))
    yield server
    server.close()


@pytest.fixture
def train_argv(tmp_path, ae_tiny, pc_tiny, train_images) -> list[str]:
    """A run saving at every step, with train summaries every 2 and no end of its own."""
    data = str(train_images / "*.png")
    return [ae_tiny, pc_tiny, "--dataset_train", data, "--dataset_test", data,
            "--log_dir_root", str(tmp_path / "logs"), "--num_workers", "0",
            "--log_interval_save", "1", "--log_interval_train", "2",
            "--log_interval_test", "-1", "--keep_ckpts", "3", "--max_steps", "100000"]


def _newest_step(logs: Path) -> int:
    """The newest checkpoint's step in the only log dir under `logs` (0: none yet)."""
    dirs = list(logs.iterdir()) if logs.is_dir() else []
    assert len(dirs) <= 1, dirs
    saved = ckpt.list_checkpoints(dirs[0]) if dirs and (dirs[0] / "ckpts").is_dir() else []
    return saved[-1][0] if saved else 0


def _wait_for_checkpoint_after(logs: Path, step: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _newest_step(logs) <= step:
        assert time.monotonic() < deadline, f"no checkpoint after step {step}"
        time.sleep(0.01)


def _restored_step(out: Path) -> int | None:
    m = re.search(r"Restored .* \(step (\d+)", out.read_text())
    return int(m.group(1)) if m else None


def test_kill_9_at_random_moments_then_resume(fork_trainer, train_argv, tmp_path):
    logs = tmp_path / "logs"
    rng = random.Random(0)
    history = []  # (step resumed from, newest checkpoint after the kill)
    newest = 0
    for kill in range(10):
        argv = train_argv
        if kill:
            argv = [*train_argv, "--restore", str(next(logs.iterdir())), "--restore_continue"]
        pid, out = fork_trainer.start(argv)
        _wait_for_checkpoint_after(logs, newest)  # it restored, trained and saves
        time.sleep(rng.uniform(0, 0.3))
        os.kill(pid, signal.SIGKILL)
        status = fork_trainer.wait()
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        resumed_from = _restored_step(out)
        assert resumed_from == (newest if kill else None), out.read_text()
        after = _newest_step(logs)
        assert after > newest  # steps never go back
        history.append((resumed_from, after))
        newest = after
    (log_dir,) = logs.iterdir()  # one log dir
    final = newest + 2
    pid, out = fork_trainer.start([*train_argv[:-1], str(final), "--restore", str(log_dir),
                                   "--restore_continue"])
    assert os.waitstatus_to_exitcode(fork_trainer.wait()) == 0, out.read_text()
    assert _restored_step(out) == newest
    print("kill -9 (resumed from, newest checkpoint after the kill):", history)
    saved = ckpt.list_checkpoints(log_dir)
    assert saved[-1][0] == final
    for step, path in saved:
        assert ckpt.load_checkpoint(path)["step"] == step
    # A kill during an atomic write can leave its hidden temp file; nothing reads those.
    temps = [p.name for p in (log_dir / "ckpts").iterdir() if p.name.startswith(".")]
    print("temp files left:", temps)
    for path in (log_dir / "ckpts").iterdir():
        assert (path.name in temps or path in {p for _, p in saved}
                or path.name in ("ae_config", "pc_config")), path
    # Each run's events file; the steps an interrupted run lost are hidden, so the train
    # summaries' steps only go forward.
    events = EventAccumulator(str(log_dir)).Reload()
    steps = [e.step for e in events.Scalars("train/total")]
    assert steps == sorted(set(steps)) and steps[-1] in (final - 1, final)


def _adam_steps(state: dict, name: str) -> set[int]:
    return {int(s["step"]) for s in state[name]["state"].values()}


def test_ctrl_c_finishes_the_step_and_saves_it(fork_trainer, train_argv, tmp_path):
    """Ctrl-C at a random moment: exit 130 with a checkpoint of the last step in which both
    optimizers stepped as often as the global step says; again after a resume."""
    logs = tmp_path / "logs"
    argv = [*train_argv, "--log_interval_save", "1000"]  # saves only when stopping
    rng = random.Random(1)
    newest = 0
    for round_ in range(2):
        resume = ["--restore", str(next(logs.iterdir())), "--restore_continue"] if round_ else []
        pid, out = fork_trainer.start([*argv, *resume])
        while "loss=" not in out.read_text():  # training runs
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.2))
        os.kill(pid, signal.SIGINT)
        assert os.waitstatus_to_exitcode(fork_trainer.wait()) == 130, out.read_text()
        text = out.read_text()
        assert "SIGINT received; stopping." in text and "Ctrl-C again" in text
        step, path = ckpt.list_checkpoints(next(logs.iterdir()))[-1]
        assert step > newest and f"Saved {path} (last step)" in text
        state = ckpt.load_checkpoint(path)
        assert _adam_steps(state, "ae_optimizer") == _adam_steps(state, "pc_optimizer") == {
            step}
        newest = step


def test_a_second_ctrl_c_interrupts_at_once():
    previous = signal.getsignal(signal.SIGINT)
    stop = train_loop.StopRequest(announce=False)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM  # SIGTERM again would change nothing
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs at the next bytecode, long before this ends
    finally:
        stop.close()
    assert signal.getsignal(signal.SIGINT) is previous


def test_a_second_ctrl_c_exits_without_saving(train_argv, tmp_path, monkeypatch, capfd):
    real_step = trainer_module.Trainer.train_step

    def step(self, x):
        if self.step == 2:  # Ctrl-C twice in the third step, before it updates anything
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self, x)

    monkeypatch.setattr(trainer_module.Trainer, "train_step", step)
    assert train_run.main(train_argv) == 130
    captured = capfd.readouterr()
    assert "Ctrl-C again" in captured.err and "exiting without saving" in captured.err
    assert "(last step)" not in captured.out
    (log_dir,) = (tmp_path / "logs").iterdir()
    assert [s for s, _ in ckpt.list_checkpoints(log_dir)] == [1, 2]
