"""train.py's console lines: one logger (`log`), printed on the main rank and written to
LOG_DIR/console.log (`ConsoleLog`); errors on every rank. The steps' progress, whatever the
summary intervals (`Progress`): on the console only, never in console.log."""

from __future__ import annotations

import datetime
import logging
import sys
import time
from logging.handlers import MemoryHandler
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

CONSOLE_LOG_NAME = "console.log"  # in the log dir: train.py's console lines
# train.py's console lines (ConsoleLog gives them their handlers).
log = logging.getLogger("imgcomp.train")
# Without a terminal (output to a file, a batch job's log), a progress line at most this often.
PROGRESS_LINE_SECONDS = 30.0


class _AboveTheBar(logging.StreamHandler):
    """A console line printed above the progress bar, which is redrawn below it."""

    def emit(self, record: logging.LogRecord) -> None:
        with tqdm.external_write_mode(file=self.stream):
            super().emit(record)


class ConsoleLog:
    """The handlers of train.py's console lines (`log`): on the main rank, info lines to
    stdout and errors to stderr, both also to LOG_DIR/console.log from `to_file` on (the
    lines logged before the log dir exists are held until then and written first); on the
    other ranks, errors to stderr only."""

    def __init__(self, is_main: bool) -> None:
        log.propagate = False
        log.setLevel(logging.INFO if is_main else logging.ERROR)
        err = _AboveTheBar(sys.stderr)
        err.setLevel(logging.ERROR)
        self._handlers: list[logging.Handler] = [err]
        if is_main:
            out = _AboveTheBar(sys.stdout)
            out.addFilter(lambda record: record.levelno < logging.ERROR)
            # Holds every line until to_file gives it the file to write them to.
            self._early = MemoryHandler(capacity=sys.maxsize, flushLevel=logging.CRITICAL + 1)
            self._handlers += [out, self._early]
        for handler in self._handlers:
            log.addHandler(handler)

    def to_file(self, log_dir: Path) -> None:
        """Log into LOG_DIR/console.log too, after the lines held so far. Appended (a log
        dir continued by --restore_continue keeps its earlier runs' lines), not atomic: a
        log grows line by line, and a kill can at worst cut its last line short."""
        file = logging.FileHandler(log_dir / CONSOLE_LOG_NAME, mode="a", encoding="utf-8")
        self._early.setTarget(file)
        self._early.flush()
        self._early.close()
        log.removeHandler(self._early)
        self._handlers.remove(self._early)
        self._handlers.append(file)
        log.addHandler(file)

    def close(self) -> None:
        for handler in self._handlers:
            log.removeHandler(handler)
            handler.close()


class Progress:
    """The run's steps as they go, on stderr: on a terminal a bar (steps, steps/s and, with
    --max_steps, the time left), else a line every PROGRESS_LINE_SECONDS; so a run shows it
    is going between summaries, however far apart (--log_interval_train)."""

    def __init__(self, step: int, max_steps: int | None, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr
        self._max_steps = max_steps
        self._start = self._last_line = time.monotonic()
        self._start_step = step
        self._bar = (tqdm(total=max_steps, initial=step, unit="step", file=self._stream,
                          dynamic_ncols=True, leave=False)
                     if self._stream.isatty() else None)

    def update(self, step: int) -> None:
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            return
        now = time.monotonic()
        if now - self._last_line >= PROGRESS_LINE_SECONDS:
            self._last_line = now
            self._stream.write(self._line(step, now) + "\n")
            self._stream.flush()

    def _line(self, step: int, now: float) -> str:
        rate = (step - self._start_step) / max(now - self._start, 1e-9)
        line = f"step {step}"
        if self._max_steps is not None:
            line += f"/{self._max_steps} ({100 * step / self._max_steps:.0f}%)"
        line += f", {rate:.2f} steps/s"
        if self._max_steps is not None and rate > 0:
            left = datetime.timedelta(seconds=round((self._max_steps - step) / rate))
            line += f", eta {left}"
        return line

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
