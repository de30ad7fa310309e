"""
A soak's record: the time of every step, and every `window` steps a window with the
median step time and a sample of the memory.
"""
import gc
import os
import statistics
import time

from harness import children_pss_mib, rss_mib


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
        if self._extra is not None:
            sample.update(self._extra())
        return sample
