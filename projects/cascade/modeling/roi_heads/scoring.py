"""
How the stages' class scores become the detections' scores at test time (TEST_SCORE).

A scorer takes the stages run so far, their predictors (one per stage, in order) and a
function that re-runs every one of those stages' classifiers on the boxes the last stage hands
on (only the paper's ensemble needs it); it returns, per image, the class probabilities of
the last stage's boxes.
"""

from typing import Callable, Dict, List, Sequence

import torch

__all__ = [
    "Scorer",
    "SCORERS",
    "mean_of_stages",
    "mean_of_stage_logits",
    "mean_on_final_boxes",
    "last_stage",
    "score_name",
]

Scorer = Callable[[List, Sequence, Callable[[List], List]], List[torch.Tensor]]


def mean_of_stages(stages, predictors, rescore=None):
    """Each stage scores its own input boxes; the scores are averaged (detectron2)."""
    probs_per_stage = [
        predictor.predict_probs(stage.predictions, stage.proposals)
        for predictor, stage in zip(predictors, stages)
    ]
    # In detectron2's order of operations, so that "mean" gives the built-in's bits.
    return [sum(probs) * (1.0 / len(probs_per_stage)) for probs in zip(*probs_per_stage)]


def mean_of_stage_logits(stages, predictors, rescore=None):
    """
    mmdetection's ensemble: each stage scores its own input boxes, and the stages' class
    logits, not their probabilities, are averaged, then turned into probabilities once.
    """
    logits = sum(stage.predictions[0] for stage in stages) * (1.0 / len(stages))
    last = stages[-1]
    return predictors[len(stages) - 1].predict_probs((logits, last.predictions[1]), last.proposals)


def mean_on_final_boxes(stages, predictors, rescore):
    """
    The paper's ensemble: the classifiers of every stage score the same boxes, the ones the
    last stage hands on (with class-specific regression, each row's top-scoring class's box).
    """
    return mean_of_stages(rescore(stages), predictors)


def last_stage(stages, predictors, rescore=None):
    """The last stage's scores alone, to measure it without the ensemble."""
    last = stages[-1]
    return predictors[len(stages) - 1].predict_probs(last.predictions, last.proposals)


SCORERS: Dict[str, Scorer] = {
    "mean": mean_of_stages,
    "mean_logits": mean_of_stage_logits,
    "mean_on_final": mean_on_final_boxes,
    "last": last_stage,
}


def score_name(scorer: Scorer) -> str:
    """The TEST_SCORE value of `scorer`."""
    return next(name for name, s in SCORERS.items() if s is scorer)
