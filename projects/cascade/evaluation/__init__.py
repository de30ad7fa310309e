"""Evaluation: COCO AP at strict IoUs, every stage of the cascade, and model-zoo checks."""

from .coco_evaluation import COCOEvaluatorAtIoUs
from .expected_results import ExpectedResultsError, check_expected_results
from .stage_evaluation import CascadeStageEvaluator

__all__ = [
    "COCOEvaluatorAtIoUs",
    "CascadeStageEvaluator",
    "ExpectedResultsError",
    "check_expected_results",
]
