#!/usr/bin/env python
"""
Ablate the cascade's options on the real tree crowns: train each variant with the demo's
budget and seed, then evaluate every TEST_SCORE mode and TEST_STAGE of each trained
cascade without retraining.

    python experiments/ablation_trees.py            # the full run: 6 trainings of ~10-14 CPU minutes
    python experiments/ablation_trees.py --quick    # 2 iterations each, to check the pipeline

Trainings are plain `train_net.py` calls; one whose metrics.json already holds its final
evaluation is reused. Writes <output>/ablation.md and ablation.json.
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import build_detection_test_loader
from detectron2.evaluation import inference_on_dataset
from detectron2.modeling import build_model

from projects.cascade import add_cascade_config
from projects.cascade.config import TEST_SCORES
from projects.cascade.evaluation import COCOEvaluatorAtIoUs

REPO = Path(__file__).resolve().parents[1]
CASCADE = "configs/trees/cascade_rcnn_trees.yaml"
KEY = "MODEL.ROI_BOX_CASCADE_HEAD."
# The 4th stage continues the weights' progression; the paper gives none for it.
VARIANTS = {
    "faster_rcnn": ("Faster R-CNN", "configs/trees/faster_rcnn_trees.yaml", []),
    "cascade_3_stages": ("cascade, detectron2 defaults (3 stages)", CASCADE, []),
    "mmdet_loss_weights": (
        "stage weights (1, 0.5, 0.25), no gradient scaling",
        "configs/trees/cascade_rcnn_trees_mmdet_loss_weights.yaml",
        [],
    ),
    "resample": ("RESAMPLE", CASCADE, [KEY + "RESAMPLE", "True"]),
    "cascade_2_stages": (
        "2 stages (0.5, 0.6)",
        CASCADE,
        [
            KEY + "IOUS",
            "(0.5, 0.6)",
            KEY + "BBOX_REG_WEIGHTS",
            "((10, 10, 5, 5), (20, 20, 10, 10))",
            KEY + "STAGE_LOSS_WEIGHTS",
            "(1.0, 1.0)",
        ],
    ),
    "cascade_4_stages": (
        "4 stages (0.5, 0.6, 0.7, 0.75)",
        CASCADE,
        [
            KEY + "IOUS",
            "(0.5, 0.6, 0.7, 0.75)",
            KEY + "BBOX_REG_WEIGHTS",
            "((10, 10, 5, 5), (20, 20, 10, 10), (30, 30, 15, 15), (40, 40, 20, 20))",
            KEY + "STAGE_LOSS_WEIGHTS",
            "(1.0, 1.0, 1.0, 1.0)",
        ],
    ),
}
# Checks the pipeline, not the numbers: few iterations and few boxes per image.
QUICK = [
    "SOLVER.MAX_ITER",
    "2",
    "SOLVER.IMS_PER_BATCH",
    "2",
    "SOLVER.WARMUP_ITERS",
    "1",
    "DATALOADER.NUM_WORKERS",
    "0",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN",
    "100",
    "MODEL.RPN.POST_NMS_TOPK_TEST",
    "50",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
    "32",
]
METRICS = ("AP", "AP50", "AP75", "AP90")


def load_cfg(config, opts):
    cfg = get_cfg()
    add_cascade_config(cfg)
    cfg.merge_from_file(str(REPO / config))
    cfg.merge_from_list(opts)
    return cfg


def train(out_dir, config, opts, seed):
    """Train unless out_dir already holds a finished run; return the median s/iter."""
    metrics = out_dir / "metrics.json"
    if not (metrics.exists() and "bbox/AP" in metrics.read_text()):
        cmd = [
            sys.executable,
            "train_net.py",
            "--config-file",
            config,
            *opts,
            "SEED",
            str(seed),
            "OUTPUT_DIR",
            str(out_dir),
        ]
        print("+", " ".join(cmd), flush=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / "train.log", "w") as log:
            subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=True)
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    times = [r["time"] for r in rows if "time" in r]
    # detectron2 starts timing after a few iterations; --quick runs may have none.
    return statistics.median(times) if times else float("nan")


def evaluate(cfg, weights, dataset):
    model = build_model(cfg)
    DetectionCheckpointer(model).load(str(weights))
    model.eval()
    loader = build_detection_test_loader(cfg, dataset)
    with torch.no_grad():
        result = inference_on_dataset(model, loader, COCOEvaluatorAtIoUs(dataset))
    return {m: result["bbox"][m] for m in METRICS}


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="2 training iterations per variant, 50 proposals per test image",
    )
    parser.add_argument("--seed", type=int, default=1, help="the demo's seed")
    parser.add_argument("--output", default=str(REPO / "output" / "trees" / "ablation"))
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    args = parser.parse_args(argv)
    output = Path(args.output)
    extra = QUICK if args.quick else []

    trained, test_time = [], []
    for slug in args.variants:
        name, config, opts = VARIANTS[slug]
        out_dir = output / f"{slug}_seed{args.seed}"
        seconds = train(out_dir, config, opts + extra, args.seed)
        cfg = load_cfg(config, opts + extra)
        cfg.MODEL.DEVICE = "cpu"
        weights = out_dir / "model_final.pth"
        row = {"variant": name, "s_per_iter": seconds}
        for dataset in ("trees_val", "trees_test"):
            row[dataset] = evaluate(cfg, weights, dataset)
        trained.append(row)
        print(json.dumps(row), flush=True)
        if cfg.MODEL.ROI_HEADS.NAME != "CascadeRCNNROIHeads":
            continue
        for score in TEST_SCORES:
            for stage in range(1, len(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS) + 1):
                cfg.MODEL.ROI_BOX_CASCADE_HEAD.TEST_SCORE = score
                cfg.MODEL.ROI_BOX_CASCADE_HEAD.TEST_STAGE = stage
                test_time.append(
                    {
                        "variant": name,
                        "TEST_SCORE": score,
                        "TEST_STAGE": stage,
                        "trees_val": evaluate(cfg, weights, "trees_val"),
                    }
                )

    output.mkdir(parents=True, exist_ok=True)
    (output / "ablation.json").write_text(
        json.dumps({"trained": trained, "test_time": test_time}, indent=1)
    )
    fmt = lambda m: " | ".join(f"{m[k]:.1f}" for k in METRICS)  # noqa: E731
    lines = [
        "| variant | val AP | val AP50 | val AP75 | val AP90 | test AP | test AP50 | test AP75 | test AP90 | s/iter |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['variant']} | {fmt(r['trees_val'])} | {fmt(r['trees_test'])} | {r['s_per_iter']:.2f} |"
        for r in trained
    ]
    lines += [
        "",
        "| trained variant | TEST_SCORE | TEST_STAGE | val AP | val AP50 | val AP75 | val AP90 |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['variant']} | {r['TEST_SCORE']} | {r['TEST_STAGE']} | {fmt(r['trees_val'])} |"
        for r in test_time
    ]
    table = "\n".join(lines)
    (output / "ablation.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
