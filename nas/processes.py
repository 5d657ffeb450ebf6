"""What every spawned worker process shares: the search's trial workers and the trainer's replicas."""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import signal
import sys

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>

# fork would share torch's thread pools (and the parent's locks) with the child.
spawn = mp.get_context("spawn")


def die_with_parent() -> None:
    """Ask Linux to end this worker if the process that started it dies (even by kill -9)."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
