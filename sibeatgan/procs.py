"""Child processes that never outlive their parent, and a SIGTERM that unwinds like Ctrl-C.

A pool worker blocked on a pipe, or a search worker training on, would otherwise go on for minutes after its
parent was killed. On Linux the kernel kills the child when the parent dies (PR_SET_PDEATHSIG); a thread that
watches the parent's pid covers the rest (other systems, a parent that died before the child asked).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
WATCH_INTERVAL_S = 1.0


def die_with_parent(parent_pid: int, interval_s: float = WATCH_INTERVAL_S) -> None:
    """Call first thing in a child process: it is killed when process `parent_pid` (its parent) ends, however that ends.

    The child also gets SIGTERM's default action back (a forked child inherits its parent's handler)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
                log.debug("prctl(PR_SET_PDEATHSIG): errno %d", ctypes.get_errno())
        except (OSError, AttributeError) as err:
            log.debug("prctl unavailable (%s); the parent watch alone applies", err)
    if os.getppid() != parent_pid:  # the parent died before the line above: nobody is left to wait for this child
        os._exit(1)
    threading.Thread(target=_watch, args=(parent_pid, interval_s), name="parent-watch", daemon=True).start()


def _watch(parent_pid: int, interval_s: float) -> None:
    stop = threading.Event()
    while not stop.wait(interval_s):
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGKILL)


class Terminated(SystemExit):
    """Raised in the main thread on SIGTERM, so `finally` blocks (pools, temp files, runs) unwind as on Ctrl-C."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(128 + signum)
        self.signum = signum


def _raise_terminated(signum: int, _frame: Any) -> None:
    raise Terminated(signum)


@contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Within the block, SIGTERM raises Terminated (exit status 143) instead of ending the process on the spot.

    Only the main thread can set signal handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop_processes(procs: list[Any], timeout_s: float = 5.0) -> None:
    """SIGTERM each live process, wait up to `timeout_s` for all, then SIGKILL the ones left."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout_s)
        if p.is_alive():
            p.kill()
            p.join(timeout_s)
