"""
Per-stage evaluation (TEST.CASCADE_STAGE_EVAL): every stage and ensemble from one inference
pass, each equal to a run of the model with the matching TEST_STAGE and TEST_SCORE.
"""

import json
import math

import pytest

from detectron2.evaluation import DatasetEvaluators, inference_on_dataset

from projects.cascade.evaluation import COCOEvaluatorAtIoUs
from projects.cascade.evaluation.stage_evaluation import (
    COLUMNS,
    CascadeStageEvaluator,
)
from projects.cascade.modeling.stage_outputs import CascadeStageOutputs
from tests.helpers import build_like, tiny_cfg


def _model(reference, **options):
    return build_like(reference, tiny_cfg(**options)).eval()


def _evaluate(model, evaluator, inputs):
    return inference_on_dataset(model, [[x] for x in inputs], evaluator)


def _coco(detected_dataset, model):
    name, _, inputs, output_dir = detected_dataset
    return _evaluate(model, COCOEvaluatorAtIoUs(name, output_dir=str(output_dir)), inputs)["bbox"]


@pytest.fixture(scope="module")
def stage_results(detected_dataset):
    name, model, inputs, output_dir = detected_dataset
    evaluator = DatasetEvaluators(
        [
            COCOEvaluatorAtIoUs(name, output_dir=str(output_dir)),
            CascadeStageEvaluator(name, str(output_dir)),
        ]
    )
    return _evaluate(CascadeStageOutputs(model), evaluator, inputs)


def _row(results, name):
    return _comparable({c: results["cascade_stages"][f"{name}/{c}"] for c in COLUMNS})


def _comparable(metrics):
    """NaN (a metric without ground truth) made equal to itself."""
    return {k: "nan" if math.isnan(v) else v for k, v in metrics.items()}


def _coco_row(detected_dataset, model):
    standard = _coco(detected_dataset, model)
    return _comparable({c: standard[c] for c in COLUMNS})


def test_last_ensemble_is_the_standard_evaluation(detected_dataset, stage_results):
    standard = _coco(detected_dataset, detected_dataset[1])
    # The main evaluation is unchanged.
    assert _comparable(stage_results["bbox"]) == _comparable(standard)
    assert _row(stage_results, "1~3") == _coco_row(detected_dataset, detected_dataset[1])
    assert standard["AP"] > 10


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_stage_alone_is_test_stage_with_its_own_scores(detected_dataset, stage_results, stage):
    model = _model(detected_dataset[1], TEST_STAGE=stage, TEST_SCORE="last")
    assert _row(stage_results, str(stage)) == _coco_row(detected_dataset, model)


def test_first_ensemble_is_test_stage_with_mean_scores(detected_dataset, stage_results):
    model = _model(detected_dataset[1], TEST_STAGE=2, TEST_SCORE="mean")
    assert _row(stage_results, "1~2") == _coco_row(detected_dataset, model)


def test_the_sets_differ(stage_results):
    """Else the equalities above would prove nothing."""
    rows = [tuple(_row(stage_results, n).values()) for n in ("1", "2", "3", "1~2", "1~3")]
    assert len(set(rows)) == 5


def test_tables_are_written(detected_dataset, stage_results):
    output_dir = detected_dataset[3]
    table = json.loads((output_dir / "cascade_stages.json").read_text())
    assert list(table["rows"]) == ["1", "2", "3", "1~2", "1~3"]
    assert table["rows"]["2"] == _row(stage_results, "2")
    markdown = (output_dir / "cascade_stages.md").read_text()
    header = "| stages   |   AP |   AP50 |   AP60 |   AP70 |   AP75 |   AP80 |   AP85 |   AP90 |"
    header += "   AP95 |"
    assert header in markdown
    assert f"| 1~3      | {stage_results['cascade_stages']['1~3/AP']:4.1f} |" in markdown
