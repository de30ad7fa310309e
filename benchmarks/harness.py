"""
How the benchmarks measure: paired repetitions in alternating order after a warm-up,
medians and per-pair ratios with their quartiles, the peak resident memory of one call,
the resident memory of this process and of its children, and a description of the
machine and the code that ran them.
"""

import ctypes
import gc
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import detectron2


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


def rss_mib():
    """This process's resident set size (VmRSS), in MiB."""
    return _status_kb("VmRSS") / 1024.0


def _child_pids():
    pids = []
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as f:
            pids += [int(p) for p in f.read().split()]
    return pids


def children_pss_mib():
    """
    (number of child processes, their proportional set size (Pss) summed, in MiB). Pss
    rather than RSS: a forked child (a data-loader worker) starts out sharing its parent's
    pages, and its RSS counts them whole and does not change when writing to them makes
    private copies; Pss splits each shared page among its sharers, so what a child copies
    or allocates shows up, and the sum over processes counts every page once.
    """
    count, kb = 0, 0
    for pid in _child_pids():
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                kb += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
            count += 1
        except (FileNotFoundError, ProcessLookupError):
            pass  # it ended between the listing and the reading
    return count, kb / 1024.0


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
        "detectron2": detectron2.__version__,
        "python": platform.python_version(),
        "loadavg_1_5_15": load,
    }


def commit():
    """The repository's commit, "+changes" if the working tree differs from it; None outside git."""
    repo = Path(__file__).resolve().parents[1]

    def git(*args):
        return subprocess.run(
            ["git", *args], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        return head + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return None
