"""What every spawned worker process shares: the search's trial workers and the trainer's replicas."""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>

# fork would share torch's thread pools (and the parent's locks) with the child.
spawn = mp.get_context("spawn")


# Worker processes worth running at once: two single-threaded ones beat one with two threads here
# (README, Performance); more would only split the same cores finer.
DEFAULT_JOBS = min(2, os.cpu_count() or 1)


def threads_per_process(processes: int) -> int:
    """Torch threads for each of `processes` processes sharing this machine's cores."""
    return max(1, (os.cpu_count() or 1) // processes)


def start_deaf_to_ctrl_c(process: mp.process.BaseProcess) -> None:
    """Start `process` with SIGINT ignored from its first instruction: a spawned child inherits the
    ignored signal, and Python then installs no KeyboardInterrupt handler, so a Ctrl-C typed while
    it still imports cannot end it with a traceback. The parent, which gets the Ctrl-C, ends it."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        process.start()
    finally:
        signal.signal(signal.SIGINT, previous)


def die_with_parent() -> None:
    """Ask Linux to end this worker if the process that started it dies (even by kill -9)."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
