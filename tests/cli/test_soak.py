"""
benchmarks/soak.py: its verdict on windows with known growth, and a --quick run end to end
(no timing is checked).
"""

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO, env, load_script

report = load_script("benchmarks/soak_report.py")


def _windows(rss_per_window=0.0, ms_per_window=0.0, history_per_window=0.0, count=20):
    """Windows of 100 steps whose RSS, step time and metrics history rise linearly."""
    return [
        {
            "steps": 100 * (i + 1),
            "median_ms": 100.0 + ms_per_window * i,
            "rss_mib": 500.0 + rss_per_window * i,
            "workers": 1,
            "workers_pss_mib": 50.0,
            "python_objects": 100_000,
            "load_1min": 1.0,
            "metrics_history_mib": history_per_window * i,
        }
        for i in range(count)
    ]


def test_flat_windows_pass():
    s = report.summarize_phase(_windows())
    assert s["memory_flat"] and s["time_flat"]
    assert (s["from_step"], s["to_step"]) == (200, 2000)


def test_a_leak_of_8_kib_per_step_fails():
    # 8 KiB per step: 0.78 MiB per window of 100, 14 MiB over the 1800 steps measured.
    s = report.summarize_phase(_windows(rss_per_window=100 * 8 / 1024))
    assert not s["memory_flat"]
    assert "memory GROWS" in report.verdict("training", s)


def test_the_metrics_history_is_not_counted_as_a_leak():
    grows = 100 * 8 / 1024
    s = report.summarize_phase(_windows(rss_per_window=grows, history_per_window=grows))
    assert s["memory_flat"]
    assert s["rss_growth_beyond_history_mib"] == pytest.approx(0.0, abs=1e-9)


def test_a_rising_step_time_fails_and_a_load_change_is_named():
    windows = _windows(ms_per_window=2.0)  # 102 ms at window 2, 138 ms at the last
    windows[-1]["load_1min"] = 2.0
    s = report.summarize_phase(windows)
    assert not s["time_flat"]
    line = report.verdict("inference", s)
    assert "time GROWS (trend ratio 1.353" in line
    assert "the load average went from 1.00 to 2.00" in line


def test_one_slow_window_does_not_decide_the_time_verdict():
    # Compared end to end, a slow window 2 would read as a 0.71x shrink and a slow last
    # window as a 1.4x growth; the trend over all windows moves by about 10% either way.
    for slow in (1, -1):
        windows = _windows()
        windows[slow]["median_ms"] = 140.0
        s = report.summarize_phase(windows)
        assert s["time_flat"], (slow, s["time_ratio"])
        assert abs(s["time_ratio"] - 1.0) < 0.12


def test_memory_glibc_can_return_is_not_counted_as_a_leak():
    # Untrimmed RSS drifts up by 20 MiB; after malloc_trim it is flat, or leaks 8 KiB/step.
    windows = _windows(rss_per_window=20 / 19)
    for w in windows:
        w["rss_trimmed_mib"] = 450.0
    s = report.summarize_phase(windows)
    assert s["memory_flat"] and s["rss_after_malloc_trim"]
    assert s["rss_untrimmed_growth_mib"] == pytest.approx(18.95, abs=0.01)
    for i, w in enumerate(windows):
        w["rss_trimmed_mib"] += i * 100 * 8 / 1024
    assert not report.summarize_phase(windows)["memory_flat"]


def test_workers_growth_counts():
    windows = _windows()
    windows[-1]["workers_pss_mib"] += 20.0
    assert not report.summarize_phase(windows)["memory_flat"]


@pytest.mark.e2e
def test_quick_soak_writes_its_report(trees_prepared, tmp_path):
    proc = subprocess.run(
        [sys.executable, "benchmarks/soak.py", "--quick", "--output", str(tmp_path)],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "soak.json").read_text())
    assert results["quick"] is True
    for phase in ("training", "inference"):
        windows = results[phase]["windows"]
        assert [w["steps"] for w in windows] == [2, 4, 6], phase
        assert all(w["rss_mib"] > 0 and w["median_ms"] > 0 for w in windows)
        assert all(0 < w["rss_trimmed_mib"] <= w["rss_mib"] + 1 for w in windows)
    # The recipe's loader worker runs beside the training, and is measured.
    assert all(w["workers"] == 1 for w in results["training"]["windows"])
    assert results["training"]["windows"][-1]["metrics_scalars"] > 10
    assert (tmp_path / "train" / "model_final.pth").exists()
    assert "## Training" in proc.stdout and "**inference: memory" in proc.stdout
    assert "RSS after malloc_trim" in proc.stdout
