"""
How the stages' class scores become the detections' scores at test time (TEST_SCORE).
Each scorer returns, per image, the class probabilities of the last stage's boxes.
"""

from typing import Callable, Dict

from .nonfinite import finite_or_zero

__all__ = ["SCORERS", "mean_of_stages", "mean_of_stage_logits", "mean_on_final_boxes", "last_stage"]


def mean_of_stages(heads, features, stages):
    """Each stage scores its own input boxes; the scores are averaged (detectron2, mmdetection)."""
    probs_per_stage = [
        heads.box_predictor[k].predict_probs(stage.predictions, stage.proposals)
        for k, stage in enumerate(stages)
    ]
    return _average(probs_per_stage)


def mean_of_stage_logits(heads, features, stages):
    """
    mmdetection's ensemble: each stage scores its own input boxes, and the stages' class
    logits, not their probabilities, are averaged, then turned into probabilities once.
    """
    logits = sum(stage.predictions[0] for stage in stages) * (1.0 / len(stages))
    predictor = heads.box_predictor[len(stages) - 1]
    return predictor.predict_probs((logits, stages[-1].predictions[1]), stages[-1].proposals)


def mean_on_final_boxes(heads, features, stages):
    """
    The paper's ensemble: the classifiers of every stage score the same boxes, the ones the
    last stage hands on (with class-specific regression, each row's top-scoring class's box).
    """
    image_sizes = [p.image_size for p in stages[0].proposals]
    proposals = heads._create_proposals_from_boxes(finite_or_zero(stages[-1].refined), image_sizes)
    box_features = heads.box_pooler(features, [p.proposal_boxes for p in proposals])
    probs_per_stage = []
    for k in range(len(stages)):
        predictions = heads.box_predictor[k](heads.box_head[k](box_features))
        probs_per_stage.append(heads.box_predictor[k].predict_probs(predictions, proposals))
    return _average(probs_per_stage)


def last_stage(heads, features, stages):
    """The last stage's scores alone, to measure it without the ensemble."""
    predictor = heads.box_predictor[len(stages) - 1]
    return predictor.predict_probs(stages[-1].predictions, stages[-1].proposals)


def _average(probs_per_stage):
    # In detectron2's order of operations, so that "mean" gives the built-in's bits.
    return [sum(probs) * (1.0 / len(probs_per_stage)) for probs in zip(*probs_per_stage)]


SCORERS: Dict[str, Callable] = {
    "mean": mean_of_stages,
    "mean_logits": mean_of_stage_logits,
    "mean_on_final": mean_on_final_boxes,
    "last": last_stage,
}
