"""
What the analysis tools (`iou_analysis.py`, `stage_quality.py` beside this file) share: their
command line, the trained cascade of a YAML config with its weights, the batches, and the
writing of their results.
"""

import argparse
import os
import sys

from detectron2.config import CfgNode

from projects.cascade import CascadeRCNNROIHeads
from projects.cascade.config_loader import load_config
from projects.cascade.data.ground_truth_loader import ground_truth_loader
from projects.cascade.demo import register_demo
from projects.cascade.engine.predictor import build_trained_model

__all__ = [
    "analysis_argument_parser",
    "load_trained_cascade",
    "batches_to_analyse",
    "write_results",
]


def analysis_argument_parser(description, files):
    """--config-file, --dataset, --output (the folder for `files`), --max-images, overrides."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--dataset", help="a registered dataset (default: the first DATASETS.TEST)")
    parser.add_argument("--output", required=True, help=f"folder for {files}")
    parser.add_argument("--max-images", type=int, default=0, help="0: the whole dataset")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser


def load_trained_cascade(args):
    """(cfg, the model with MODEL.WEIGHTS loaded, the dataset to analyse); exits on a bad config."""
    register_demo()
    cfg = load_config(args.config_file, args.opts)
    if not isinstance(cfg, CfgNode):
        sys.exit(f"error: {args.config_file} is a LazyConfig; the analysis tools read YAML.")
    model = build_trained_model(cfg)
    if not isinstance(model.roi_heads, CascadeRCNNROIHeads):
        sys.exit(f"error: {args.config_file} does not use CascadeRCNNROIHeads; nothing to analyse.")
    return cfg, model, args.dataset or cfg.DATASETS.TEST[0]


def batches_to_analyse(cfg, dataset, max_images):
    """The dataset's test batches with their ground truth, up to `max_images` (0: all)."""
    images = 0
    for batch in ground_truth_loader(cfg, dataset):
        if max_images and images >= max_images:
            return
        yield batch
        images += len(batch)


def write_results(output, name, summary, save, title, table):
    """`save(summary, json, png, title=...)` to <output>/<name>.{json,png}; print the table."""
    os.makedirs(output, exist_ok=True)
    json_path = os.path.join(output, f"{name}.json")
    png_path = os.path.join(output, f"{name}.png")
    save(summary, json_path, png_path, title=f"{title} ({summary['images']} images)")
    print(table)
    print(f"wrote {png_path} and {json_path}")
