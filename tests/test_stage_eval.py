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
from detectron2.structures import Boxes, BoxMode, Instances

from projects.cascade.errors import ConfigError
from projects.cascade.evaluation import COCOEvaluatorAtIoUs
from projects.cascade.evaluation.stage_evaluation import (
    COLUMNS,
    CascadeStageEvaluator,
    check_stage_eval_config,
)
from projects.cascade.modeling.stage_outputs import STAGES_KEY, CascadeStageOutputs, detections_by_stage
from tests.common import assert_same_detections, build, synthetic_batch, tiny_cfg

SIZES = ((128, 160), (96, 128), (112, 112))
UPSCALE = 1.5  # the "original" images are larger than the network's input


def _cfg(mask=False, class_specific=False, **options):
    cfg = tiny_cfg(mask=mask)
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = not class_specific
    for key, value in options.items():
        setattr(cfg.MODEL.ROI_BOX_CASCADE_HEAD, key, value)
    return cfg


def _model(reference=None, **options):
    model = build(_cfg(**options))
    if reference is not None:
        model.load_state_dict(reference.state_dict())
    return model.eval()


def _inputs(with_masks=False):
    """Test-time inputs whose outputs are rescaled by UPSCALE, as for resized images."""
    batch = synthetic_batch(with_masks=with_masks, sizes=SIZES)
    for i, x in enumerate(batch):
        x["image_id"] = i
        x["height"], x["width"] = round(x["height"] * UPSCALE), round(x["width"] * UPSCALE)
    return batch


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
    inputs = _inputs()
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


@pytest.mark.parametrize("mask", [False, True])
def test_outputs_are_the_model_own(mask):
    model = _model(mask=mask)
    inputs = _inputs(with_masks=mask)
    with torch.no_grad():
        expected, got = model(inputs), CascadeStageOutputs(model)(inputs)
    assert_same_detections(expected, got, masks=mask)
    for g in got:
        # stage_boxes are rescaled with the boxes: the last stage's box is the detection's.
        torch.testing.assert_close(g["instances"].stage_boxes[:, -1], g["instances"].pred_boxes.tensor)


# ----------------------------------------------------------------- stage_boxes


def _set_stage(predictor, class_logits, deltas):
    """Make a stage predict the same logits and (weighted) deltas for every box."""
    with torch.no_grad():
        predictor.cls_score.weight.zero_()
        predictor.cls_score.bias.copy_(torch.tensor(class_logits))
        predictor.bbox_pred.weight.zero_()
        predictor.bbox_pred.bias.copy_(torch.tensor(deltas))


def _moved(predictor, deltas, boxes, image_size):
    moved = Boxes(predictor.box2box_transform.apply_deltas(deltas.expand(len(boxes), 4), boxes))
    moved.clip(image_size)
    return moved.tensor


@pytest.mark.parametrize("class_specific", [False, True])
def test_stage_boxes_follow_each_detection_through_the_stages(class_specific):
    """
    Stage k moves every box right by (k + 1) / 10 of its width, by (c + 1) / 10 more for
    class c with class-specific regression. Every stage scores class 1 first, then class 0,
    so with class-specific regression class 1's box goes on to the next stage.
    """
    model = _model(class_specific=class_specific)
    heads = model.roi_heads
    num_stages, num_classes = 3, 3

    def shift(stage, c):
        return float(stage + 1) + (c + 1) * class_specific

    for k, predictor in enumerate(heads.box_predictor):
        deltas = [d for c in range(num_classes) for d in (shift(k, c), 0.0, 0.0, 0.0)]
        _set_stage(predictor, [1.0, 2.0, 0.5, 0.0], deltas[: predictor.bbox_pred.out_features])
    heads.box_predictor[-1].test_score_thresh = 0.2  # detect classes 0 and 1
    batch = synthetic_batch(sizes=SIZES[:1])
    images = model.preprocess_image(batch)
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(20, 2, generator=g) * 100
    proposals = Instances(images.image_sizes[0], proposal_boxes=Boxes(torch.cat([xy, xy + 20], 1)))
    with torch.no_grad():
        features = model.backbone(images.tensor)
        (detections,), _ = detections_by_stage(heads, features, [proposals])

    assert set(detections.pred_classes.tolist()) == {0, 1}
    stage_boxes = detections.stage_boxes
    assert stage_boxes.shape == (len(detections), 1 + num_stages, 4)
    distances = torch.cdist(stage_boxes[:, 0], proposals.proposal_boxes.tensor, p=float("inf"))
    assert (distances.min(dim=1).values < 1e-4).all(), "column 0 holds the proposals"
    for k, predictor in enumerate(heads.box_predictor):
        for c in (0, 1):
            of_class = detections.pred_classes == c
            moved_as = c if k == num_stages - 1 else 1  # the detected class at the end
            delta = torch.tensor([shift(k, moved_as), 0.0, 0.0, 0.0])
            expected = _moved(predictor, delta, stage_boxes[of_class, k], detections.image_size)
            torch.testing.assert_close(stage_boxes[of_class, k + 1], expected)
    torch.testing.assert_close(stage_boxes[:, -1], detections.pred_boxes.tensor)


# ----------------------------------------------------------------------- config


def test_stage_eval_needs_the_cascade_heads():
    cfg = tiny_cfg(roi_heads="StandardROIHeads")
    cfg.TEST.CASCADE_STAGE_EVAL = True
    with pytest.raises(ConfigError, match="TEST.CASCADE_STAGE_EVAL True needs"):
        check_stage_eval_config(cfg)
    with pytest.raises(ConfigError, match="CascadeRCNNROIHeads"):
        CascadeStageOutputs(build(cfg))
    check_stage_eval_config(tiny_cfg())  # off: any heads
