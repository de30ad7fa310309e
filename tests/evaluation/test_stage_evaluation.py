"""
Per-stage evaluation (TEST.CASCADE_STAGE_EVAL): every stage and ensemble from one inference
pass, each equal to a run of the model with the matching TEST_STAGE and TEST_SCORE.
"""
import json
import math
import uuid

import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluators, inference_on_dataset
from detectron2.structures import BoxMode

from projects.cascade.errors import ConfigError
from projects.cascade.evaluation import COCOEvaluatorAtIoUs
from projects.cascade.evaluation.stage_evaluation import (
    COLUMNS,
    CascadeStageEvaluator,
)
from projects.cascade.modeling.stage_outputs import STAGES_KEY, CascadeStageOutputs
from tests.helpers import build, rescaled_inputs, tiny_cfg

SIZES = ((128, 160), (96, 128), (112, 112))
UPSCALE = 1.5  # the "original" images are larger than the network's input


def _model(reference=None, **options):
    model = build(tiny_cfg(**options))
    if reference is not None:
        model.load_state_dict(reference.state_dict())
    return model.eval()


def _jittered(boxes, amount):
    offsets = torch.tensor([amount, -amount, amount, amount])
    return (boxes + offsets).tolist()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """
    The synthetic images, with ground truth taken from the detections of single stages,
    jittered: every set of detections then has an AP well above 0, and the sets differ.
    """
    model = _model()
    inputs = rescaled_inputs(SIZES, UPSCALE)
    with torch.no_grad():
        outputs = CascadeStageOutputs(model)(inputs)
    dicts = []
    for x, output in zip(inputs, outputs):
        annotations = []
        for name, amount in (("1", 1.0), ("3", 3.0)):
            found = output[STAGES_KEY][name][:4]
            for box, c in zip(_jittered(found.pred_boxes.tensor, amount), found.pred_classes):
                annotations.append(
                    {"bbox": box, "bbox_mode": BoxMode.XYXY_ABS, "category_id": int(c)}
                )
        dicts.append(
            {"file_name": f"synthetic_{x['image_id']}.png", "image_id": x["image_id"],
             "height": x["height"], "width": x["width"], "annotations": annotations}
        )
    name = f"stage_eval_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).thing_classes = ["a", "b", "c"]
    yield name, model, inputs, tmp_path_factory.mktemp("stage_eval")
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _evaluate(model, evaluator, inputs):
    return inference_on_dataset(model, [[x] for x in inputs], evaluator)


def _coco(dataset, model):
    name, _, inputs, output_dir = dataset
    return _evaluate(model, COCOEvaluatorAtIoUs(name, output_dir=str(output_dir)), inputs)["bbox"]


@pytest.fixture(scope="module")
def stage_results(dataset):
    name, model, inputs, output_dir = dataset
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


def _coco_row(dataset, model):
    standard = _coco(dataset, model)
    return _comparable({c: standard[c] for c in COLUMNS})


def test_last_ensemble_is_the_standard_evaluation(dataset, stage_results):
    standard = _coco(dataset, dataset[1])
    # The main evaluation is unchanged.
    assert _comparable(stage_results["bbox"]) == _comparable(standard)
    assert _row(stage_results, "1~3") == _coco_row(dataset, dataset[1])
    assert standard["AP"] > 10


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_stage_alone_is_test_stage_with_its_own_scores(dataset, stage_results, stage):
    model = _model(dataset[1], TEST_STAGE=stage, TEST_SCORE="last")
    assert _row(stage_results, str(stage)) == _coco_row(dataset, model)


def test_first_ensemble_is_test_stage_with_mean_scores(dataset, stage_results):
    model = _model(dataset[1], TEST_STAGE=2, TEST_SCORE="mean")
    assert _row(stage_results, "1~2") == _coco_row(dataset, model)


def test_the_sets_differ(stage_results):
    """Else the equalities above would prove nothing."""
    rows = [tuple(_row(stage_results, n).values()) for n in ("1", "2", "3", "1~2", "1~3")]
    assert len(set(rows)) == 5


def test_tables_are_written(dataset, stage_results):
    output_dir = dataset[3]
    table = json.loads((output_dir / "cascade_stages.json").read_text())
    assert list(table["rows"]) == ["1", "2", "3", "1~2", "1~3"]
    assert table["rows"]["2"] == _row(stage_results, "2")
    markdown = (output_dir / "cascade_stages.md").read_text()
    assert "| stages   |   AP |   AP50 |   AP60 |   AP70 |   AP75 |   AP80 |   AP90 |" in markdown
    assert f"| 1~3      | {stage_results['cascade_stages']['1~3/AP']:4.1f} |" in markdown


