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
import argparse
import os
import sys

import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.modeling import build_model

from projects.cascade import CascadeRCNNROIHeads
from projects.cascade.data.ground_truth_loader import ground_truth_loader
from projects.cascade.engine.launch import load_config
from projects.cascade.evaluation.stage_quality import (
    StageAPByIoU,
    format_tables,
    localization_pairs,
    save,
    summarize,
)
from projects.cascade.modeling import CascadeStageOutputs


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--dataset", help="a registered dataset (default: the first DATASETS.TEST)")
    parser.add_argument("--output", required=True, help="folder for stage_quality.{png,json}")
    parser.add_argument("--max-images", type=int, default=0, help="0: the whole dataset")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config_file, args.opts)
    if not isinstance(cfg, CfgNode):
        sys.exit(f"error: {args.config_file} is a LazyConfig; this tool reads YAML configs.")
    dataset = args.dataset or cfg.DATASETS.TEST[0]
    model = build_model(cfg)
    if not isinstance(model.roi_heads, CascadeRCNNROIHeads):
        sys.exit(f"error: {args.config_file} does not use CascadeRCNNROIHeads; nothing to analyse.")
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()
    os.makedirs(args.output, exist_ok=True)

    with_stages = CascadeStageOutputs(model)
    detection = StageAPByIoU(dataset, args.output)
    pairs = []  # per batch: per stage
    images = 0
    for batch in ground_truth_loader(cfg, dataset):
        if args.max_images and images >= args.max_images:
            break
        pairs.append(localization_pairs(model, batch))
        detection.process(batch, with_stages(batch))
        images += len(batch)
    if not images:
        sys.exit(f"error: dataset {dataset} gave no images.")

    pairs_per_stage = [torch.cat(stage) for stage in zip(*pairs)]
    summary = {"dataset": dataset, "images": images, "weights": cfg.MODEL.WEIGHTS}
    summary.update(summarize(pairs_per_stage, detection.evaluate(), model.roi_heads.test_score))
    json_path = os.path.join(args.output, "stage_quality.json")
    png_path = os.path.join(args.output, "stage_quality.png")
    save(summary, json_path, png_path, title=f"Each cascade stage on {dataset} ({images} images)")
    print(format_tables(summary))
    print(f"wrote {png_path} and {json_path}")
    return summary


if __name__ == "__main__":
    main()
