"""
The TEST_PRUNE_TOPK / TEST_PRUNE_NMS_THRESH grid: ours pruned at each setting next to
Faster R-CNN and the built-in cascade, each cascade's overhead over Faster R-CNN, and the
trees setup's pruning table (COCO AP on trees_val and trees_test, and inference time).
"""

import torch

from detectron2.evaluation import COCOEvaluator

from compared_models import variant_of
from harness import paired_times, summarize
from workloads import infer_fn, tree_inputs

KEY = "MODEL.ROI_BOX_CASCADE_HEAD."
# (TEST_PRUNE_TOPK, TEST_PRUNE_NMS_THRESH); (0, 1.0) is off.
PRUNE_SETTINGS = (
    (100, 1.0),
    (200, 1.0),
    (300, 1.0),
    (500, 1.0),
    (0, 1.0),
    (0, 0.8),
    (0, 0.7),
    (200, 0.8),
    (150, 0.7),
)


def prune_name(k, nms):
    parts = ([f"nms={nms}"] if nms < 1.0 else []) + ([f"k={k}"] if k else [])
    return ",".join(parts) or "off"


def pruning_variants(models, config_file, **overrides):
    """
    Faster R-CNN, the built-in cascade, then ours at every setting of the grid: built from
    `config_file` with `overrides` and the pruning keys, with ours' weights.
    """
    variants = {"faster": models["faster"], "builtin": models["builtin"]}
    for k, nms in PRUNE_SETTINGS:
        prune = {f"{KEY}TEST_PRUNE_TOPK": k, f"{KEY}TEST_PRUNE_NMS_THRESH": nms}
        variants[prune_name(k, nms)] = variant_of(models["ours"], config_file, **overrides, **prune)
    return variants


def add_overheads(timing):
    """
    Each cascade's overhead over Faster R-CNN (time ratio - 1, from the paired ratios, which
    load affects least) relative to ours with pruning off, and to the built-in's.
    """
    for name, row in timing.items():
        if name == "faster":
            continue
        for ref, key in (("off", "overhead_vs_off"), ("builtin", "overhead_vs_builtin")):
            ref_overhead = timing[ref]["x_faster"] - 1.0
            overhead = row["x_faster"] - 1.0
            row[key] = overhead / ref_overhead if ref_overhead > 0 else None


def coco_ap(model, dataset, inputs):
    evaluator = COCOEvaluator(dataset, output_dir=None, tasks=("bbox",))
    evaluator.reset()
    with torch.no_grad():
        for x in inputs:
            evaluator.process([x], model([x]))
    return evaluator.evaluate().get("bbox", {})


def run_prune_trees(args, results, cfg, config_file, models, inputs):
    """
    Pruning on trees_val: COCO AP and AP75, and inference time against Faster R-CNN's; and
    the AP on trees_test (other sites), which no setting was chosen on.
    """
    test_inputs = tree_inputs(cfg, "trees_test", 2 if args.quick else None, is_train=False)
    variants = pruning_variants(models, config_file)
    accuracy = {}
    for name, model in variants.items():
        val, test = coco_ap(model, "trees_val", inputs), coco_ap(model, "trees_test", test_inputs)
        accuracy[name] = {"AP": val.get("AP"), "AP75": val.get("AP75"), "test_AP": test.get("AP")}
    timing = summarize(
        paired_times(
            {n: infer_fn(m, inputs) for n, m in variants.items()}, args.prune_reps, args.warmup
        )
    )
    for name in variants:
        timing[name].update(accuracy[name])
    add_overheads(timing)
    results["trees/prune"] = {"num_tiles": len(inputs), **timing}
