"""
The trees demo setup: the trained demo weights (random ones in a quick run without them) on
trees_val tiles. Times inference, the ROI heads alone by number of proposals and of stages,
and training iterations; measures peak memory; counts parameters and FLOPs; then runs the
pruning table.
"""

import copy
from pathlib import Path

from detectron2.solver import build_optimizer

from compared_models import build_trio, trio
from fvcore_counts import section_params_flops
from harness import paired_memory, paired_times, summarize
from projects.cascade.modeling.stage_outputs import features_and_proposals
from pruning_grid import run_prune_trees
from workloads import infer_fn, roi_fn, synthetic_proposals, train_fn, tree_inputs

TREES_CONFIGS = {
    "ours": "configs/trees/cascade_rcnn_trees.yaml",
    "builtin": "configs/trees/cascade_rcnn_trees.yaml",
    "faster": "configs/trees/faster_rcnn_trees.yaml",
}


def trees_models(args, results):
    """The trio with the trained demo weights (random ones for a quick run without them)."""
    cascade_w = args.cascade_weights if Path(args.cascade_weights).is_file() else None
    faster_w = args.faster_weights if Path(args.faster_weights).is_file() else None
    if args.quick and not (cascade_w and faster_w):
        cascade_w = faster_w = None  # random weights: the quick run checks the plumbing
    elif not (cascade_w and faster_w):
        raise FileNotFoundError(
            f"trained demo weights not found: {args.cascade_weights}, {args.faster_weights}"
        )
    results["trees/weights"] = {"cascade": cascade_w, "faster": faster_w}
    return build_trio(TREES_CONFIGS, cascade_w, faster_w)


def run_trees(args, results):
    num_tiles = 2 if args.quick else 10
    cfgs, models = trees_models(args, results)
    inputs = tree_inputs(cfgs["ours"], "trees_val", num_tiles, is_train=False)
    reps, warm = args.fast_reps, args.warmup

    print(f"trees demo, {num_tiles} trees_val tiles", flush=True)
    results["trees/inference"] = summarize(
        paired_times({n: infer_fn(m, inputs) for n, m in models.items()}, reps, warm)
    )
    results["trees/inference_peak_rss"] = paired_memory(
        {n: (lambda m=m: infer_fn(m, inputs)(0)) for n, m in trio(models).items()}, args.mem_reps
    )
    section_params_flops(results, "trees", trio(models), inputs[:1])

    # ROI heads alone, on one tile's features: RPN proposals, then N synthetic proposals.
    images, features, proposals = features_and_proposals(models["builtin"], inputs[:1])
    results["trees/roi_heads"] = summarize(
        paired_times(
            {n: roi_fn(m, images, features, proposals) for n, m in models.items()}, reps, warm
        )
    )
    counts = (50, 100) if args.quick else (250, 500, 1000, 2000)
    results["trees/roi_heads_by_proposals"] = {}
    for count in counts:
        props = [synthetic_proposals(images.image_sizes[0], count)]
        results["trees/roi_heads_by_proposals"][str(count)] = summarize(
            paired_times(
                {n: roi_fn(m, images, features, props) for n, m in trio(models).items()},
                args.scaling_reps,
                warm,
            )
        )
    # Stages: random heads (seed 0) on the trained backbone, 1000 synthetic proposals.
    props = [synthetic_proposals(images.image_sizes[0], counts[-1] if args.quick else 1000)]
    results["trees/roi_heads_by_stages"] = {}
    for stages in range(1, 6) if not args.quick else (1, 2):
        staged = trio(build_trio(TREES_CONFIGS, stages=stages)[1])
        for n in staged:
            backbone = {k: v for k, v in models[n].state_dict().items() if not k.startswith("roi_")}
            staged[n].load_state_dict(backbone, strict=False)
        staged["ours"].load_state_dict(staged["builtin"].state_dict(), strict=True)
        results["trees/roi_heads_by_stages"][str(stages)] = summarize(
            paired_times(
                {n: roi_fn(m, images, features, props) for n, m in staged.items()},
                args.scaling_reps,
                warm,
            )
        )

    run_trees_train(args, results, cfgs, models)
    run_prune_trees(args, results, cfgs["ours"], TREES_CONFIGS["ours"], models, inputs)


def run_trees_train(args, results, cfgs, models):
    """Training iteration: forward, backward and SGD step on a fixed batch of 4 tiles."""
    batch = tree_inputs(cfgs["ours"], "trees_train", 2 if args.quick else 4, is_train=True)
    train_models = {n: copy.deepcopy(m).train() for n, m in models.items()}
    optimizers = {n: build_optimizer(cfgs[n], m) for n, m in train_models.items()}
    fns = {n: train_fn(m, optimizers[n], batch) for n, m in train_models.items()}
    print(f"trees demo, training iterations (batch {len(batch)})", flush=True)
    results["trees/train_iter"] = summarize(paired_times(fns, args.train_reps, args.warmup))
    results["trees/train_peak_rss"] = paired_memory(
        {n: (lambda f=f: f(0)) for n, f in trio(fns).items()}, args.mem_reps
    )
