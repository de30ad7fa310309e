#!/usr/bin/env python
"""
Export a trained model to TorchScript or ONNX by tracing (see projects/cascade/export/),
in the manner of detectron2's tools/deploy/export_model.py:

    python tools/deploy/export_model.py --config-file configs/trees/cascade_rcnn_trees.yaml \\
        --format onnx --output output/export/trees MODEL.WEIGHTS model_final.pth

The model is traced on the first sample image: --sample-image files, else the images of
--dataset (default: the config's first DATASETS.TEST). --verify then runs the exported
model and PyTorch eager on every sample (at most --num-samples), prints their largest
differences and times per image as a markdown table, and fails if a difference is out of
tolerance. tools/deploy/run_exported.py runs the exported file without detectron2.
"""

import argparse
import logging
import sys

import torch

from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from projects.cascade.config_loader import load_config
from projects.cascade.demo import register_demo
from projects.cascade.engine.predictor import build_trained_model
from projects.cascade.export import (
    FORMATS,
    ONNX_OPSET,
    ExportedModel,
    compare_with_eager,
    deploy_metadata,
    export_model,
    format_table,
    load_images,
)


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--format", required=True, nargs="+", choices=FORMATS)
    parser.add_argument(
        "--output", required=True, metavar="DIR", help="writes model.ts / model.onnx here"
    )
    parser.add_argument("--sample-image", nargs="+", default=[], metavar="FILE")
    parser.add_argument("--dataset", help="registered dataset to take sample images from")
    parser.add_argument("--num-samples", type=int, default=10, help="at most this many samples")
    parser.add_argument("--opset", type=int, default=ONNX_OPSET, help="ONNX opset")
    parser.add_argument("--verify", action="store_true", help="compare with eager and time both")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per sample in --verify")
    parser.add_argument("--threads", type=int, help="CPU threads of torch and onnxruntime")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    logger = setup_logger(name="projects.cascade")
    setup_logger(name="detectron2", abbrev_name="d2").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    register_demo()
    cfg = load_config(args.config_file, [*args.opts, "MODEL.DEVICE", "cpu"])

    # Layers that MODEL.WEIGHTS does not cover start from the same random values every time.
    seed_all_rng(cfg.SEED if cfg.SEED >= 0 else None)
    model = build_trained_model(cfg)
    dataset = args.dataset or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None)
    samples = load_images(cfg, args.sample_image, dataset, args.num_samples)
    logger.info(f"Tracing on {samples[0][0]}; {len(samples)} sample images.")

    rows = []
    for fmt in args.format:
        path = export_model(
            model, samples[0][1], fmt, args.output, deploy_metadata(cfg), args.opset
        )
        if args.verify:
            exported = ExportedModel(path, args.threads)
            rows.append((fmt, compare_with_eager(model, exported, samples, args.repeats)))
    if not rows:
        return 0
    print(format_table(rows))
    failures = [f"{fmt}: {f}" for fmt, c in rows for f in c.differences.failures()]
    for failure in failures:
        logger.error(f"Exported model differs from eager: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
