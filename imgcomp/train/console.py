"""train.py's console lines: one logger (`log`), printed on the main rank and written to
LOG_DIR/console.log (`ConsoleLog`); errors on every rank."""

from __future__ import annotations

import logging
import sys
from logging.handlers import MemoryHandler
from pathlib import Path

CONSOLE_LOG_NAME = "console.log"  # in the log dir: train.py's console lines
# train.py's console lines (ConsoleLog gives them their handlers).
log = logging.getLogger("imgcomp.train")


class ConsoleLog:
    """The handlers of train.py's console lines (`log`): on the main rank, info lines to
    stdout and errors to stderr, both also to LOG_DIR/console.log from `to_file` on (the
    lines logged before the log dir exists are held until then and written first); on the
    other ranks, errors to stderr only."""

    def __init__(self, is_main: bool) -> None:
        log.propagate = False
        log.setLevel(logging.INFO if is_main else logging.ERROR)
        err = logging.StreamHandler(sys.stderr)
        err.setLevel(logging.ERROR)
        self._handlers: list[logging.Handler] = [err]
        if is_main:
            out = logging.StreamHandler(sys.stdout)
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
