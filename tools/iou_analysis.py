#!/usr/bin/env python
"""
Where the boxes stand: the IoU of the boxes entering each cascade stage with their
best-matching ground truth, for a trained model over a dataset, twice: in training mode
(the boxes each stage is trained on; nothing is updated) and at inference (all proposals).

    python tools/iou_analysis.py --config-file configs/trees/cascade_rcnn_trees.yaml \
        --dataset trees_train --output output/trees/iou_analysis \
        MODEL.WEIGHTS output/trees/cascade_rcnn/model_final.pth

Writes iou_analysis.png (a histogram per mode and stage, like the paper's Figure 4) and
iou_analysis.json to --output, and prints the fraction of boxes at IoU >= 0.5, 0.6, 0.7.
"""

import torch

import analysis_cli
from projects.cascade.evaluation import iou_analysis


def parse_args(argv=None):
    parser = analysis_cli.analysis_argument_parser(
        __doc__.split("\n\n")[0], "iou_analysis.{png,json}"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the training-mode sampling")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg, model, dataset = analysis_cli.load_trained_cascade(args)
    torch.manual_seed(args.seed)

    analysis = iou_analysis.IoUAnalysis()
    images = 0
    for batch in analysis_cli.batches_to_analyse(cfg, dataset, args.max_images):
        for mode in iou_analysis.MODES:
            ious = iou_analysis.stage_input_ious(model, batch, training=mode == "training")
            analysis.add(mode, ious)
        images += len(batch)

    summary = {"dataset": dataset, "images": images, "weights": cfg.MODEL.WEIGHTS}
    summary.update(analysis.summary())
    title = f"IoU of each stage's input boxes with the best-matching ground truth, {dataset}"
    analysis_cli.write_results(
        args.output,
        "iou_analysis",
        summary,
        iou_analysis.save,
        title,
        iou_analysis.format_table(summary),
    )
    return summary


if __name__ == "__main__":
    main()
