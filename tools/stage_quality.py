#!/usr/bin/env python
"""
What each cascade stage does, for a trained model over a dataset: the IoU of every box each
stage gets against the IoU of the box it makes of it (localization), and the COCO AP at
each IoU threshold 0.50 ... 0.95 of every stage alone and of the model's own output
(detection), all stages' detections from one inference pass.

    python tools/stage_quality.py --config-file configs/trees/cascade_rcnn_trees.yaml \
        --dataset trees_val --output output/trees/stage_quality \
        MODEL.WEIGHTS output/trees/cascade_rcnn/model_final.pth

Writes stage_quality.png (the two panels) and stage_quality.json to --output, and prints
the numbers behind them as two tables.
"""

import os
import sys

import torch

import analysis_cli
from projects.cascade.evaluation import stage_quality
from projects.cascade.modeling import CascadeStageOutputs
from projects.cascade.modeling.roi_heads.scoring import score_name


def parse_args(argv=None):
    parser = analysis_cli.analysis_argument_parser(
        __doc__.split("\n\n")[0], "stage_quality.{png,json}"
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg, model, dataset = analysis_cli.load_trained_cascade(args)
    model.eval()
    os.makedirs(args.output, exist_ok=True)

    with_stages = CascadeStageOutputs(model)
    detection = stage_quality.StageAPByIoU(dataset, args.output)
    pairs = []  # per batch: per stage
    images = 0
    for batch in analysis_cli.batches_to_analyse(cfg, dataset, args.max_images):
        pairs.append(stage_quality.localization_pairs(model, batch))
        detection.process(batch, with_stages(batch))
        images += len(batch)
    if not images:
        sys.exit(f"error: dataset {dataset} gave no images.")

    pairs_per_stage = [torch.cat(stage) for stage in zip(*pairs)]
    summary = {"dataset": dataset, "images": images, "weights": cfg.MODEL.WEIGHTS}
    summary.update(
        stage_quality.summarize(
            pairs_per_stage, detection.evaluate(), score_name(model.roi_heads.scorer)
        )
    )
    analysis_cli.write_results(
        args.output,
        "stage_quality",
        summary,
        stage_quality.save,
        f"Each cascade stage on {dataset}",
        stage_quality.format_tables(summary),
    )
    return summary


if __name__ == "__main__":
    main()
