"""
How the benchmarks measure: paired repetitions in alternating order after a warm-up,
medians and per-pair ratios with their quartiles, the peak resident memory of one call,
and a description of the machine that ran them.
"""
import ctypes
import gc
import os
import platform
import statistics
import sys
import time

import torch


# ----------------------------------------------------------------------------- timing
def paired_times(fns, reps, warmup):
    """{name: [seconds per repetition]}; the order alternates between repetitions."""
    names = list(fns)
    for r in range(warmup):
        for n in names:
            fns[n](r)
    times = {n: [] for n in names}
    for r in range(reps):
        for n in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            fns[n](r)
            times[n].append(time.perf_counter() - start)
    return times


def summarize(times, unit=1000.0):
    """
    Median per name, in ms, and the median paired ratio to builtin and to faster, with the
    quartiles of the paired ratios: the spread that load and noise give the ratio.
    """
    row = {}
    for n, ts in times.items():
        row[n] = {"median_ms": statistics.median(ts) * unit, "reps": len(ts)}
        for ref in ("builtin", "faster"):
            if ref in times and ref != n:
                ratios = [a / b for a, b in zip(ts, times[ref])]
                row[n][f"x_{ref}"] = statistics.median(ratios)
                if len(ratios) >= 4:
                    q1, _, q3 = statistics.quantiles(ratios, n=4)
                    row[n][f"x_{ref}_quartiles"] = (q1, q3)
    return row


# ----------------------------------------------------------------------------- memory
_LIBC = ctypes.CDLL("libc.so.6") if sys.platform.startswith("linux") else None


def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def peak_rss_mb(fn):
    """
    Peak resident memory while `fn` runs, above the resident memory before it (MB). The
    kernel's high-water mark (VmHWM) is reset first, and freed heap memory returned to the
    system, so that what an earlier model left cached does not hide this one's peak.
    """
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    before = _status_kb("VmRSS")
    fn()
    return (_status_kb("VmHWM") - before) / 1024.0


def paired_memory(fns, reps):
    """{name: median peak RSS increase (MB)} over `reps` alternating repetitions."""
    names = list(fns)
    peaks = {n: [] for n in names}
    for r in range(reps):
        for n in names if r % 2 == 0 else names[::-1]:
            peaks[n].append(peak_rss_mb(fns[n]))
    row = {}
    for n, ps in peaks.items():
        row[n] = {"median_mb": statistics.median(ps), "reps": len(ps)}
        for ref in ("builtin", "faster"):
            if ref != n:
                row[n][f"x_{ref}"] = statistics.median(ps) / statistics.median(peaks[ref])
    return row


# ----------------------------------------------------------------------------- machine
def machine():
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "loadavg_1_5_15": load,
    }
