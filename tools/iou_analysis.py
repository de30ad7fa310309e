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
import argparse
import os
import sys

import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from projects.cascade import CascadeRCNNROIHeads
from projects.cascade.data.ground_truth_loader import ground_truth_loader
from projects.cascade.engine.launch import load_config
from projects.cascade.evaluation.iou_analysis import (
    MODES,
    IoUAnalysis,
    format_table,
    save,
    stage_input_ious,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--dataset", help="a registered dataset (default: the first DATASETS.TEST)")
    parser.add_argument("--output", required=True, help="folder for iou_analysis.{png,json}")
    parser.add_argument("--max-images", type=int, default=0, help="0: the whole dataset")
    parser.add_argument("--seed", type=int, default=0, help="seeds the training-mode sampling")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config_file, args.opts)
    dataset = args.dataset or cfg.DATASETS.TEST[0]
    model = build_model(cfg)
    if not isinstance(model.roi_heads, CascadeRCNNROIHeads):
        sys.exit(f"error: {args.config_file} does not use CascadeRCNNROIHeads; nothing to analyse.")
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    torch.manual_seed(args.seed)

    analysis = IoUAnalysis()
    images = 0
    for batch in ground_truth_loader(cfg, dataset):
        if args.max_images and images >= args.max_images:
            break
        for mode in MODES:
            analysis.add(mode, stage_input_ious(model, batch, training=mode == "training"))
        images += len(batch)

    summary = {"dataset": dataset, "images": images, "weights": cfg.MODEL.WEIGHTS}
    summary.update(analysis.summary())
    os.makedirs(args.output, exist_ok=True)
    json_path = os.path.join(args.output, "iou_analysis.json")
    png_path = os.path.join(args.output, "iou_analysis.png")
    title = f"IoU of each stage's input boxes with the best-matching ground truth, {dataset}"
    save(summary, json_path, png_path, title=f"{title} ({images} images)")
    print(format_table(summary))
    print(f"wrote {png_path} and {json_path}")
    return summary


if __name__ == "__main__":
    main()
