"""
A soak's record: the time of every step, and every `window` steps a window with the
median step time and a sample of the memory.
"""

import ctypes
import gc
import os
import statistics
import time

from harness import children_pss_mib, rss_mib


def _glibc_malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


# glibc keeps freed memory in its arenas and returns it to the system when it sees fit, so
# RSS drifts by tens of MiB with nothing leaking. After malloc_trim(0) has returned what it
# can, RSS is closer to the memory in use: the verdict reads that where glibc is there.
MALLOC_TRIM = _glibc_malloc_trim()


class WindowRecorder:
    """
    Call `start()` before the first step and `step_done()` after each. A step's time runs
    from the end of the previous step's bookkeeping to its own end, so it holds all that
    the loop does per step (for training: the data wait, the hooks, the writers), but not
    the sampling, which happens at the end of a window and would otherwise add to the next
    step.

    `extra()`, if given, adds the phase's own values to each window's sample.
    """

    def __init__(self, window, extra=None):
        self.window = window
        self.windows = []
        self._extra = extra
        self._times = []
        self._steps = 0
        self._last = None

    def start(self):
        self._last = time.perf_counter()

    def step_done(self):
        self._times.append(time.perf_counter() - self._last)
        self._steps += 1
        if len(self._times) == self.window:
            self.windows.append(self._sample())
            self._times = []
        self._last = time.perf_counter()

    def _sample(self):
        workers, workers_pss = children_pss_mib()
        sample = {
            "steps": self._steps,
            "median_ms": statistics.median(self._times) * 1000.0,
            "rss_mib": rss_mib(),
            "workers": workers,
            "workers_pss_mib": workers_pss,
            # Growth in live Python objects points at a Python-side leak (a list that
            # keeps something per step) rather than at the allocator or a C++ cache.
            "python_objects": len(gc.get_objects()),
            "load_1min": os.getloadavg()[0],
        }
        if MALLOC_TRIM is not None:
            MALLOC_TRIM(0)
            sample["rss_trimmed_mib"] = rss_mib()
        if self._extra is not None:
            sample.update(self._extra())
        return sample
