"""Fewer OpenMP threads for short PyTorch sections, in the calling thread only.

A click's mask decoding is ~150 small parallel operations. With two OpenMP threads on a
2-core machine that is also busy (a training running, other users), every operation waits at a
barrier for a descheduled thread: measured 650 ms per click instead of 85 ms with one thread.
Likewise the training loop's batch-preparing thread: its small resampling operations run faster
on one thread (20 vs 24 ms a batch, 20 vs 36 ms of CPU) and its own OpenMP team would otherwise
compete with the network's for the same cores.
``torch.set_num_threads`` cannot help: it changes the whole process (and the default of threads
started later, e.g. a training worker). OpenMP's thread count is, however, a per-thread
setting: :func:`omp_threads` changes it for the calling thread only, through the ``libgomp``
that PyTorch loaded. Where that library cannot be found (non-Linux builds), it does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import threading
from typing import Any, Iterator

logger = logging.getLogger(__name__)

_LIB: dict[str, Any] = {}
_LOCAL = threading.local()


def _libgomp() -> Any:
    """The OpenMP runtime PyTorch uses (ctypes handle), or None."""
    if "gomp" not in _LIB:
        _LIB["gomp"] = None
        try:
            with open("/proc/self/maps") as maps:
                paths = {line.split()[-1] for line in maps if "libgomp" in line}
            for path in sorted(paths):
                lib = ctypes.CDLL(path)
                lib.omp_get_max_threads.restype = ctypes.c_int
                _LIB["gomp"] = lib
                break
        except (OSError, AttributeError, IndexError) as exc:
            logger.debug("OpenMP runtime not found (%s): thread limits disabled", exc)
    return _LIB["gomp"]


def machine_is_busy() -> bool:
    """Whether the last minute's load average exceeds half the CPU cores.

    Half, not all: the average smooths over bursts (another user's encoding, a test run) that
    already make multi-threaded clicks wait at barriers.
    """
    try:
        return os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1)
    except OSError:
        return False


@contextlib.contextmanager
def omp_threads(n: int | None) -> Iterator[None]:
    """Run the body with at most ``n`` OpenMP threads in this thread (None or 0: unchanged)."""
    import torch

    lib = _libgomp() if n else None
    if lib is None:
        yield
        return
    if not getattr(_LOCAL, "initialised", False):
        # PyTorch sets each thread's count on its first parallel operation: do that first.
        torch.zeros(1 << 16).add_(1)
        _LOCAL.initialised = True
    previous = int(lib.omp_get_max_threads())
    if previous <= n:
        yield
        return
    lib.omp_set_num_threads(int(n))
    try:
        yield
    finally:
        lib.omp_set_num_threads(previous)
