#!/usr/bin/env python
"""
Ablate the cascade's options on the real tree crowns: train each variant with the demo's
budget and seed, then evaluate every TEST_SCORE mode and TEST_STAGE of each trained
cascade without retraining.

    python experiments/ablation_trees.py            # 6 trainings of ~13 CPU minutes
    python experiments/ablation_trees.py --quick    # 2 iterations each, to check the pipeline

Trainings are plain `train_net.py` calls; one whose metrics.json already holds its final
evaluation is reused. Writes <output>/ablation.md and ablation.json.
"""

import argparse
import json
from pathlib import Path

from projects.cascade.config import TEST_SCORES
from projects.cascade.config_loader import load_config
from projects.cascade.demo import register_demo
from runs import REPO, evaluate, read_run, train

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
QUICK = (
    "SOLVER.MAX_ITER 2 SOLVER.IMS_PER_BATCH 2 SOLVER.WARMUP_ITERS 1 DATALOADER.NUM_WORKERS 0 "
    "MODEL.RPN.POST_NMS_TOPK_TRAIN 100 MODEL.RPN.POST_NMS_TOPK_TEST 50 "
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE 32"
).split()
METRICS = ("AP", "AP50", "AP75", "AP90")


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
    register_demo()
    extra = QUICK if args.quick else []

    trained, test_time = [], []
    for slug in args.variants:
        name, config, opts = VARIANTS[slug]
        out_dir = output / f"{slug}_seed{args.seed}"
        opts = [*opts, *extra]
        if read_run(out_dir, METRICS) is None:
            train(config, [*opts, "SEED", str(args.seed)], out_dir)
        weights = out_dir / "model_final.pth"
        row = {"variant": name, "s_per_iter": read_run(out_dir, METRICS)["s_per_iter"]}
        for dataset in ("trees_val", "trees_test"):
            row[dataset] = evaluate(config, opts, weights, dataset, METRICS)
        trained.append(row)
        print(json.dumps(row), flush=True)
        cfg = load_config(config, opts)
        if cfg.MODEL.ROI_HEADS.NAME != "CascadeRCNNROIHeads":
            continue
        for score in TEST_SCORES:
            for stage in range(1, len(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS) + 1):
                test_opts = [*opts, KEY + "TEST_SCORE", score, KEY + "TEST_STAGE", str(stage)]
                test_time.append(
                    {
                        "variant": name,
                        "TEST_SCORE": score,
                        "TEST_STAGE": stage,
                        "trees_val": evaluate(config, test_opts, weights, "trees_val", METRICS),
                    }
                )

    output.mkdir(parents=True, exist_ok=True)
    (output / "ablation.json").write_text(
        json.dumps({"trained": trained, "test_time": test_time}, indent=1)
    )
    fmt = lambda m: " | ".join(f"{m[k]:.1f}" for k in METRICS)  # noqa: E731
    columns = [f"{split} {m}" for split in ("val", "test") for m in METRICS] + ["s/iter"]
    lines = ["| variant | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [
        f"| {r['variant']} | {fmt(r['trees_val'])} | {fmt(r['trees_test'])} "
        f"| {r['s_per_iter']:.2f} |"
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
