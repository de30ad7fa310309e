"""
Model-zoo-style checks of evaluation results (TEST.EXPECTED_RESULTS, or test.expected_results
in a LazyConfig), as detectron2's `verify_results`, but with a message that names every
failed check.
"""

import logging
import math
from collections.abc import Mapping
from numbers import Real

__all__ = ["ExpectedResultsError", "check_expected_results"]

logger = logging.getLogger(__name__)


class ExpectedResultsError(RuntimeError):
    """Evaluation results that differ from TEST.EXPECTED_RESULTS beyond the tolerance."""


def check_expected_results(expected_results, results, key="TEST.EXPECTED_RESULTS"):
    """
    Check `results` (as `DefaultTrainer.test` returns them) against `expected_results`, a
    list of [task, metric, expected, tolerance]: |actual - expected| <= tolerance. `key` is
    the config key that holds the list, for the messages.
    With several test datasets, the task names the dataset too: "trees_val/bbox".

    detectron2's `verify_results` exits with a dump of all results and raises KeyError on
    an unknown task; this raises `ExpectedResultsError` naming, for every failed check, the
    task, metric, expected value, actual value and tolerance, or the tasks and metrics
    there are.
    """
    if not expected_results:
        return
    tasks = dict(_tasks(results))
    failures = [_failure(entry, tasks) for entry in expected_results]
    failures = [f for f in failures if f]
    if failures:
        raise ExpectedResultsError(
            f"{key}: {len(failures)} of {len(expected_results)} checks "
            "failed:\n  " + "\n  ".join(failures)
        )
    logger.info(f"{key}: all {len(expected_results)} checks passed.")


def _tasks(results, prefix=""):
    """(name, {metric: value}) of every task; with several datasets, named "dataset/task"."""
    for name, value in results.items():
        if isinstance(value, Mapping) and any(isinstance(v, Mapping) for v in value.values()):
            yield from _tasks(value, f"{prefix}{name}/")
        elif isinstance(value, Mapping):
            yield f"{prefix}{name}", value


def _failure(entry, tasks):
    """Why one [task, metric, expected, tolerance] check fails, or None if it passes."""
    if not (len(entry) == 4 and all(isinstance(x, Real) for x in entry[2:])):
        return f"{list(entry)}: expected [task, metric, expected value, tolerance]"
    task, metric, expected, tolerance = entry
    if task not in tasks:
        return f"{task}/{metric}: no task {task!r} in the results; tasks: {', '.join(tasks)}"
    if metric not in tasks[task]:
        metrics = ", ".join(tasks[task])
        return f"{task}/{metric}: task {task!r} has no metric {metric!r}; metrics: {metrics}"
    actual = tasks[task][metric]
    if math.isfinite(actual) and abs(actual - expected) <= tolerance:
        return None
    return f"{task}/{metric}: expected {expected} +- {tolerance}, actual {actual:.4f}"
