"""
The benchmark's report: its results as a JSON file, rewritten after every section, and as
Markdown tables.
"""

import json
import os
import time


class ResultsFile(dict):
    """The results, written to `path` again after every section, so that a long run keeps them."""

    def __init__(self, path, **kwargs):
        super().__init__(**kwargs)
        self.path = path

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self, indent=1))
        print(f"  {key}: done", flush=True)

    def finish(self, to_markdown, started):
        """
        Record the load at the end and the wall time since `started` (a perf_counter value),
        then the Markdown report that `to_markdown(results)` makes; print it and return it.
        """
        self["machine"]["loadavg_end"] = os.getloadavg()
        self["wall_s"] = time.perf_counter() - started
        report = to_markdown(self)
        print(report)
        self["report"] = report
        print(f"\nwrote {self.path} ({self['wall_s']:.0f} s)")
        return report


def _fmt(v, digits=1):
    return "-" if v is None else f"{v:.{digits}f}"


def _ratio(row, ref):
    """The median paired ratio, with its quartiles where measured."""
    text = _fmt(row[f"x_{ref}"], 3)
    if f"x_{ref}_quartiles" in row:
        q1, q3 = row[f"x_{ref}_quartiles"]
        text += f" ({q1:.3f}-{q3:.3f})"
    return text


def markdown(results):
    lines = []

    def table(title, rows, value, unit):
        with_tv = all("ours_tv" in row for _, row in rows)
        lines.append(f"\n{title}\n")
        lines.append(
            "| | ours | builtin | faster | ours / builtin | ours / faster |"
            + (" ours_tv | ours_tv / builtin |" if with_tv else "")
        )
        lines.append("|---|---|---|---|---|---|" + ("---|---|" if with_tv else ""))
        for label, row in rows:
            lines.append(
                f"| {label} | {_fmt(row['ours'][value])} {unit} | {_fmt(row['builtin'][value])} "
                f"{unit} | {_fmt(row['faster'][value])} {unit} | "
                f"{_ratio(row['ours'], 'builtin')} | {_ratio(row['ours'], 'faster')} |"
                + (
                    f" {_fmt(row['ours_tv'][value])} {unit} | {_ratio(row['ours_tv'], 'builtin')} |"
                    if with_tv
                    else ""
                )
            )

    main = [
        (k, results[k])
        for k in (
            "r50/inference",
            "r50/roi_heads",
            "trees/inference",
            "trees/roi_heads",
            "trees/train_iter",
        )
        if k in results
    ]
    table("Time (median ms; ratios: median of paired ratios)", main, "median_ms", "ms")
    mem = [
        (k, results[k])
        for k in ("r50/inference_peak_rss", "trees/inference_peak_rss", "trees/train_peak_rss")
        if k in results
    ]
    table("Peak RSS increase (median MB)", mem, "median_mb", "MB")
    lines.append("\nParameters and FLOPs (fvcore)\n")
    lines.append("| | model | params (M) | GFLOPs | ROI heads params (M) | ROI heads GFLOPs |")
    lines.append("|---|---|---|---|---|---|")
    for setup in ("r50", "trees"):
        rows = results.get(f"{setup}/params_flops", {})
        for n, row in rows.items():
            lines.append(
                f"| {setup} | {n} | {_fmt(row['params_M'], 2)} | {_fmt(row['gflops'], 2)} | "
                f"{_fmt(row['roi_heads_params_M'], 2)} | {_fmt(row['roi_heads_gflops'], 2)} |"
            )
    for key, label in (
        ("trees/roi_heads_by_proposals", "proposals"),
        ("trees/roi_heads_by_stages", "stages"),
    ):
        if key in results:
            table(
                f"ROI heads by {label} (trees demo, median ms)",
                list(results[key].items()),
                "median_ms",
                "ms",
            )
    for key in ("trees/prune", "r50/prune_roi_heads"):
        if key not in results:
            continue
        lines.append(f"\nTEST_PRUNE_TOPK: {key}\n")
        lines.append(
            "| pruning | AP | AP75 | test AP | ms | x faster | overhead vs off | vs builtin |"
        )
        lines.append("|---|---|---|---|---|---|---|---|")
        for name, row in results[key].items():
            if not isinstance(row, dict):
                continue
            lines.append(
                f"| {name} | {_fmt(row.get('AP'))} | {_fmt(row.get('AP75'))} | "
                f"{_fmt(row.get('test_AP'))} | "
                f"{_fmt(row['median_ms'])} | {_fmt(row.get('x_faster'), 3)} | "
                f"{_fmt(row.get('overhead_vs_off'), 2)} | "
                f"{_fmt(row.get('overhead_vs_builtin'), 2)} |"
            )
    return "\n".join(lines)
