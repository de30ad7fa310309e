"""
What a soak's windows say: the growth of memory from the first window after warm-up to the
last, the trend of the step time over those windows, a verdict per phase against fixed
thresholds, and the Markdown report. soak.py's docstring explains the thresholds.
"""

# Window 1 holds the warm-up (first calls into the allocator, the thread pools, the data
# loader's first batches, the LR warm-up): growth is measured from the end of window 2.
REFERENCE_WINDOW = 2
# Memory is flat if, after subtracting detectron2's metrics history, RSS grows by at most
# the allocator's noise plus a small rate. The same limit applies to the loader workers'
# Pss.
MEMORY_NOISE_MIB = 8.0
MEMORY_RATE_MIB_PER_1000 = 2.0
# Time is flat if the step time's trend, a straight line fitted to the medians of window 2
# to the last, ends within these bounds of where it starts. A line rather than the two end
# windows: one window slowed by the machine would otherwise decide the verdict.
TIME_RATIO_RANGE = (0.8, 1.25)
# A change of the 1-minute load average this large between the two windows is named in
# the verdict: on a shared machine the time ratio carries it.
LOAD_CHANGE = 0.5


def trend_ratio(windows):
    """The least-squares line of median step time over steps: its value at the last window
    divided by its value at the first."""
    xs = [w["steps"] for w in windows]
    ys = [w["median_ms"] for w in windows]
    x_mean, y_mean = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, ys)) / sum(
        (x - x_mean) ** 2 for x in xs
    )
    return (y_mean + slope * (xs[-1] - x_mean)) / (y_mean + slope * (xs[0] - x_mean))


def summarize_phase(windows):
    ref, last = windows[REFERENCE_WINDOW - 1], windows[-1]
    span = last["steps"] - ref["steps"]
    rss = "rss_trimmed_mib" if "rss_trimmed_mib" in ref else "rss_mib"
    rss_growth = last[rss] - ref[rss]
    history_growth = last.get("metrics_history_mib", 0.0) - ref.get("metrics_history_mib", 0.0)
    beyond_history = rss_growth - history_growth
    workers_growth = last["workers_pss_mib"] - ref["workers_pss_mib"]
    limit = MEMORY_NOISE_MIB + MEMORY_RATE_MIB_PER_1000 * span / 1000
    ratio = trend_ratio(windows[REFERENCE_WINDOW - 1 :])
    return {
        "reference_window": REFERENCE_WINDOW,
        "rss_after_malloc_trim": rss == "rss_trimmed_mib",
        "rss_untrimmed_growth_mib": last["rss_mib"] - ref["rss_mib"],
        "from_step": ref["steps"],
        "to_step": last["steps"],
        "rss_growth_mib": rss_growth,
        "rss_growth_mib_per_1000": rss_growth / span * 1000,
        "metrics_history_growth_mib": history_growth,
        "rss_growth_beyond_history_mib": beyond_history,
        "rss_growth_beyond_history_mib_per_1000": beyond_history / span * 1000,
        "workers_pss_growth_mib": workers_growth,
        "python_objects_growth": last["python_objects"] - ref["python_objects"],
        "memory_limit_mib": limit,
        "memory_flat": beyond_history <= limit and workers_growth <= limit,
        "time_ratio": ratio,
        "time_flat": TIME_RATIO_RANGE[0] <= ratio <= TIME_RATIO_RANGE[1],
        "load_1min": (ref["load_1min"], last["load_1min"]),
    }


def verdict(phase, s):
    memory = "flat" if s["memory_flat"] else "GROWS"
    time = "flat" if s["time_flat"] else "GROWS" if s["time_ratio"] > 1 else "SHRINKS"
    low, high = TIME_RATIO_RANGE
    line = (
        f"{phase}: memory {memory} ({s['rss_growth_beyond_history_mib']:+.1f} MiB beyond the "
        f"metrics history, workers {s['workers_pss_growth_mib']:+.1f} MiB; limit "
        f"{s['memory_limit_mib']:.1f} MiB), time {time} (trend ratio {s['time_ratio']:.3f}; "
        f"range {low}-{high})"
    )
    load_ref, load_last = s["load_1min"]
    if abs(load_last - load_ref) >= LOAD_CHANGE:
        line += f"; the load average went from {load_ref:.2f} to {load_last:.2f} meanwhile"
    return line


def _window_table(windows):
    with_history = "metrics_history_mib" in windows[0]
    trimmed = "rss_trimmed_mib" in windows[0]
    lines = [
        "| steps | median ms | RSS MiB |"
        + (" after malloc_trim |" if trimmed else "")
        + " workers | workers' Pss MiB |"
        + (" metrics scalars | metrics history MiB |" if with_history else "")
        + " Python objects | load (1 min) |",
        "|--:|--:|--:|"
        + ("--:|" if trimmed else "")
        + "--:|--:|"
        + ("--:|--:|" if with_history else "")
        + "--:|--:|",
    ]
    for w in windows:
        lines.append(
            f"| {w['steps']} | {w['median_ms']:.1f} | {w['rss_mib']:.1f} |"
            + (f" {w['rss_trimmed_mib']:.1f} |" if trimmed else "")
            + f" {w['workers']} | {w['workers_pss_mib']:.1f} |"
            + (
                f" {w['metrics_scalars']} | {w['metrics_history_mib']:.2f} |"
                if with_history
                else ""
            )
            + f" {w['python_objects']:,} | {w['load_1min']:.2f} |"
        )
    return lines


def soak_markdown(results):
    m = results["machine"]
    settings = results["settings"]
    lines = [
        f"# Soak: {settings['iterations']} training iterations, "
        f"{settings['inference_calls']} inference calls"
        + (" (--quick: no verdict to trust)" if results["quick"] else ""),
        "",
        f"{m['cpu']}, {m['cpu_count']} CPUs, {m['torch_threads']} torch threads; torch "
        f"{m['torch']}, detectron2 {m['detectron2']}, Python {m['python']}; commit "
        f"{results['commit']}. Load average (1, 5, 15 min): "
        f"{', '.join(f'{x:.2f}' for x in m['loadavg_1_5_15'])} at the start, "
        f"{', '.join(f'{x:.2f}' for x in m.get('loadavg_end', ()))} at the end. "
        f"Data-loader workers: {settings['workers']}. Windows of {settings['window']} steps.",
    ]
    for phase, title in (("training", "Training"), ("inference", "Inference")):
        if phase not in results:
            continue
        r, s = results[phase], results[phase]["summary"]
        lines += ["", f"## {title}", "", r["what"], ""]
        lines += _window_table(r["windows"])
        lines += [
            "",
            f"From the end of window {s['reference_window']} (step {s['from_step']}) to the "
            f"last (step {s['to_step']}): RSS"
            + (" after malloc_trim" if s["rss_after_malloc_trim"] else "")
            + f" {s['rss_growth_mib']:+.1f} MiB "
            f"({s['rss_growth_mib_per_1000']:+.2f} MiB per 1000 steps), of which detectron2's "
            f"metrics history {s['metrics_history_growth_mib']:+.2f} MiB; beyond it "
            f"{s['rss_growth_beyond_history_mib']:+.1f} MiB "
            f"({s['rss_growth_beyond_history_mib_per_1000']:+.2f} per 1000)"
            + (
                f"; untrimmed RSS {s['rss_untrimmed_growth_mib']:+.1f} MiB"
                if s["rss_after_malloc_trim"]
                else ""
            )
            + ". Workers' Pss "
            f"{s['workers_pss_growth_mib']:+.1f} MiB. Python objects "
            f"{s['python_objects_growth']:+,}. Median step time, the end of its trend (a line "
            f"fitted to window {s['reference_window']} to the last) / its start: "
            f"{s['time_ratio']:.3f}.",
            "",
            "**" + verdict(phase, s) + "**",
        ]
    return "\n".join(lines)
