"""check_expected_results: which checks pass, and what a failure says."""

import pytest

from projects.cascade.evaluation.expected_results import (
    ExpectedResultsError,
    check_expected_results,
)

RESULTS = {"bbox": {"AP": 20.5, "AP50": 58.9, "AP-tree": 20.5}, "cascade_stages": {"1~3/AP": 20.5}}


def _check(expected, results=RESULTS):
    check_expected_results(expected, results)


def test_within_tolerance_passes():
    _check([])
    _check([["bbox", "AP", 20.0, 0.5], ["cascade_stages", "1~3/AP", 21.0, 0.5]])


def test_each_failure_is_named():
    with pytest.raises(ExpectedResultsError) as e:
        _check(
            [
                ["bbox", "AP", 21.0, 0.4],
                ["bbox", "AP50", 58.9, 0.0],
                ["keypoints", "AP", 1.0, 0.1],
                ["bbox", "AP90", 1.0, 0.1],
                ["bbox", "AP", 1.0],
            ]
        )
    assert str(e.value).splitlines() == [
        "TEST.EXPECTED_RESULTS: 4 of 5 checks failed:",
        "  bbox/AP: expected 21.0 +- 0.4, actual 20.5000",
        "  keypoints/AP: no task 'keypoints' in the results; tasks: bbox, cascade_stages",
        "  bbox/AP90: task 'bbox' has no metric 'AP90'; metrics: AP, AP50, AP-tree",
        "  ['bbox', 'AP', 1.0]: expected [task, metric, expected value, tolerance]",
    ]


def test_nan_fails():
    with pytest.raises(ExpectedResultsError, match="bbox/AP: expected 0.0 \\+- 100.0, actual nan"):
        _check([["bbox", "AP", 0.0, 100.0]], {"bbox": {"AP": float("nan")}})


def test_several_datasets_are_named_in_the_task():
    results = {"trees_val": {"bbox": {"AP": 20.5}}, "trees_test": {"bbox": {"AP": 10.0}}}
    _check([["trees_val/bbox", "AP", 20.5, 0.0], ["trees_test/bbox", "AP", 10.0, 0.0]], results)
    with pytest.raises(ExpectedResultsError, match="tasks: trees_val/bbox, trees_test/bbox"):
        _check([["bbox", "AP", 20.5, 0.0]], results)
