#!/usr/bin/env python
"""
Speed, memory, parameters and FLOPs of the cascade's ROI heads, all in one process:

- ours: `CascadeRCNNROIHeads` (this project);
- builtin: detectron2's `CascadeROIHeads`, with the same weights as ours;
- faster: Faster R-CNN's `StandardROIHeads`, with the same backbone and RPN;
- ours_tv (main rows only): ours with PARALLEL_CPU_ROI_ALIGN False, i.e. torchvision's
  single-threaded RoIAlign as the other two use, to show what the parallel kernel adds.

Every time is the median of paired repetitions (ours, builtin, faster, then the reverse
order, ...) after warm-up, on the CPU with 2 threads; each ratio is the median of the
per-repetition ratios, so that load shared with other processes cancels out.

    .venv/bin/python benchmarks/benchmark_cascade.py            # full run, several minutes
    .venv/bin/python benchmarks/benchmark_cascade.py --quick    # tiny sizes, for the tests

It prints Markdown tables and writes them as JSON (--output).
"""
import argparse
import copy
import os
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.data.dataset_mapper import DatasetMapper
from detectron2.evaluation import COCOEvaluator
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from detectron2.structures import Boxes, Instances
from detectron2.utils.analysis import FlopCountAnalysis, parameter_count
from detectron2.utils.events import EventStorage
from detectron2.utils.logger import setup_logger

from projects.cascade import add_cascade_config
from projects.cascade.modeling.stage_outputs import features_and_proposals

from harness import machine, paired_memory, paired_times, summarize
from report import ResultsFile, markdown

HEADS = {"ours": "CascadeRCNNROIHeads", "builtin": "CascadeROIHeads", "faster": "StandardROIHeads"}
TORCHVISION_ROI_ALIGN = {"MODEL.ROI_BOX_CASCADE_HEAD.PARALLEL_CPU_ROI_ALIGN": False}
R50_CONFIGS = {
    "ours": "configs/cascade_rcnn_R_50_FPN_1x.yaml",
    "builtin": "configs/cascade_rcnn_R_50_FPN_1x.yaml",
    "faster": "configs/faster_rcnn_R_50_FPN_1x.yaml",
}
TREES_CONFIGS = {
    "ours": "configs/trees/cascade_rcnn_trees.yaml",
    "builtin": "configs/trees/cascade_rcnn_trees.yaml",
    "faster": "configs/trees/faster_rcnn_trees.yaml",
}
# (TEST_PRUNE_TOPK, TEST_PRUNE_NMS_THRESH); (0, 1.0) is off.
PRUNE_SETTINGS = (
    (100, 1.0), (200, 1.0), (300, 1.0), (500, 1.0), (0, 1.0),
    (0, 0.8), (0, 0.7), (200, 0.8), (150, 0.7),
)


# ----------------------------------------------------------------------------- models
def make_cfg(config_file, roi_heads, stages=None, **overrides):
    cfg = get_cfg()
    add_cascade_config(cfg)
    cfg.merge_from_file(str(REPO / config_file))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.ROI_HEADS.NAME = roi_heads
    if "MOBILENET" in cfg.MODEL:
        cfg.MODEL.MOBILENET.PRETRAINED = False  # weights come from a checkpoint or the seed
    if stages is not None:
        cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS = [0.5, 0.6, 0.7, 0.75, 0.8][:stages]
        cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS = [
            (10.0 * (k + 1), 10.0 * (k + 1), 5.0 * (k + 1), 5.0 * (k + 1)) for k in range(stages)
        ]
        cfg.MODEL.ROI_BOX_CASCADE_HEAD.STAGE_LOSS_WEIGHTS = [1.0] * stages
    for key, value in overrides.items():
        node = cfg
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return cfg


def build_trio(configs, cascade_weights=None, faster_weights=None, stages=None, **overrides):
    """
    The three models, and ours_tv. ours, ours_tv and builtin get the same weights (a
    checkpoint, or builtin's random ones); faster gets its checkpoint, or builtin's backbone
    and RPN.
    """
    cfgs = {n: make_cfg(configs[n], HEADS[n], stages=stages, **overrides) for n in HEADS}
    cfgs["ours_tv"] = make_cfg(
        configs["ours"], HEADS["ours"], stages=stages, **overrides, **TORCHVISION_ROI_ALIGN
    )
    models = {}
    for n in cfgs:
        torch.manual_seed(0)  # a fixed seed: the same random weights on every run
        models[n] = build_model(cfgs[n]).eval()
    if cascade_weights:
        state = _load(cascade_weights)
        models["builtin"].load_state_dict(state, strict=True)
    for n in ("ours", "ours_tv"):
        models[n].load_state_dict(models["builtin"].state_dict(), strict=True)
    if faster_weights:
        models["faster"].load_state_dict(_load(faster_weights), strict=True)
    else:
        shared = {
            k: v for k, v in models["builtin"].state_dict().items() if not k.startswith("roi_heads.")
        }
        models["faster"].load_state_dict(shared, strict=False)
    return cfgs, models


def trio(models):
    """Ours, the built-in and Faster R-CNN, without ours_tv (for the secondary rows)."""
    return {n: models[n] for n in HEADS}


def _load(path):
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return checkpoint.get("model", checkpoint)


# ----------------------------------------------------------------------------- inputs
def random_image(height, width, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, height, width), generator=g, dtype=torch.uint8)
    return {"image": image.float(), "height": height, "width": width}


def tree_inputs(cfg, split, num, is_train):
    import projects.cascade  # noqa: F401  registers the tree datasets

    dicts = DatasetCatalog.get(split)[:num]
    mapper = DatasetMapper(cfg, is_train=is_train)
    torch.manual_seed(0)
    import random

    import numpy as np

    random.seed(0)
    np.random.seed(0)
    return [mapper(copy.deepcopy(d)) for d in dicts]


def synthetic_proposals(image_size, num, seed=0):
    """`num` random boxes 8-160 px wide inside the image, with random objectness."""
    h, w = image_size
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(num, 2, generator=g) * torch.tensor([w, h])
    wh = 8 + torch.rand(num, 2, generator=g) * 152
    boxes = torch.cat([xy, xy + wh], dim=1)
    p = Instances(image_size)
    p.proposal_boxes = Boxes(boxes)
    p.proposal_boxes.clip(image_size)
    p.objectness_logits = torch.randn(num, generator=g)
    return p


def roi_fn(model, images, features, proposals):
    def run(_):
        with torch.no_grad():
            model.roi_heads(images, features, proposals)

    return run


def infer_fn(model, inputs):
    def run(r):
        with torch.no_grad():
            model([inputs[r % len(inputs)]])

    return run


def train_fn(model, optimizer, batch):
    def run(r):
        torch.manual_seed(r)  # the same proposal sampling for every model
        with EventStorage():
            losses = model(batch)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return run


# ----------------------------------------------------------------------------- sections
def section_params_flops(results, name, models, inputs):
    rows = {}
    for n, model in models.items():
        with torch.no_grad():
            flops = FlopCountAnalysis(model, inputs)
            flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            total = flops.total()
            by_module = flops.by_module()  # the model is traced inside a wrapper: "model."
            roi = by_module.get("roi_heads", by_module.get("model.roi_heads", 0))
        params = parameter_count(model)
        rows[n] = {
            "params_M": params[""] / 1e6,
            "roi_heads_params_M": params["roi_heads"] / 1e6,
            "gflops": total / 1e9,
            "roi_heads_gflops": roi / 1e9,
        }
    for n in rows:
        for ref in ("builtin", "faster"):
            if ref != n:
                rows[n][f"params_x_{ref}"] = rows[n]["params_M"] / rows[ref]["params_M"]
                rows[n][f"gflops_x_{ref}"] = rows[n]["gflops"] / rows[ref]["gflops"]
    results[f"{name}/params_flops"] = rows


def run_r50(args, results):
    size = (128, 160) if args.quick else (800, 1333)
    overrides = {}
    if args.quick:
        overrides = {"MODEL.RESNETS.DEPTH": 18, "MODEL.RESNETS.RES2_OUT_CHANNELS": 64}
    cfgs, models = build_trio(R50_CONFIGS, **overrides)
    for model in models.values():
        propose_anchors(model)
    inputs = [random_image(*size)]
    reps, warm = args.reps, args.warmup

    print(f"R50-FPN, random weights, one {size[0]}x{size[1]} image", flush=True)
    results["r50/inference"] = summarize(
        paired_times({n: infer_fn(m, inputs) for n, m in models.items()}, reps, warm)
    )
    images, features, proposals = features_and_proposals(models["builtin"], inputs)
    results["r50/num_proposals"] = len(proposals[0])
    results["r50/roi_heads"] = summarize(
        paired_times(
            {n: roi_fn(m, images, features, proposals) for n, m in models.items()}, reps, warm
        )
    )
    results["r50/inference_peak_rss"] = paired_memory(
        {n: (lambda m=m: infer_fn(m, inputs)(0)) for n, m in trio(models).items()}, args.mem_reps
    )
    section_params_flops(results, "r50", trio(models), inputs)

    # TEST_PRUNE_TOPK on the R50 ROI heads (1000 proposals), against Faster R-CNN's.
    fns = {n: roi_fn(models[n], images, features, proposals) for n in ("faster", "builtin")}
    for k, nms in PRUNE_SETTINGS:
        pruned = pruned_copy(models["ours"], k, nms)
        fns[prune_name(k, nms)] = roi_fn(pruned, images, features, proposals)
    timing = summarize(paired_times(fns, reps, warm))
    add_overheads(timing)
    results["r50/prune_roi_heads"] = {"num_proposals": len(proposals[0]), **timing}


def propose_anchors(model):
    """
    A random R50 (FrozenBN, nothing pre-trained) has features in the thousands: its RPN's box
    deltas send every anchor to the whole image and NMS keeps one box, so the ROI heads
    would idle. With the delta layer zeroed the RPN proposes its anchors, ranked by its
    random objectness, and keeps POST_NMS_TOPK_TEST (1000), the load a trained RPN gives.
    """
    deltas = model.proposal_generator.rpn_head.anchor_deltas
    with torch.no_grad():
        deltas.weight.zero_()
        deltas.bias.zero_()


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
    run_prune_trees(args, results, cfgs["ours"], models, inputs)


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


def prune_name(k, nms):
    parts = ([f"nms={nms}"] if nms < 1.0 else []) + ([f"k={k}"] if k else [])
    return ",".join(parts) or "off"


def pruned_copy(model, k, nms):
    pruned = copy.deepcopy(model)
    pruned.roi_heads.test_prune_topk = k
    pruned.roi_heads.test_prune_nms_thresh = nms
    return pruned


def coco_ap(model, dataset, inputs):
    evaluator = COCOEvaluator(dataset, output_dir=None, tasks=("bbox",))
    evaluator.reset()
    with torch.no_grad():
        for x in inputs:
            evaluator.process([x], model([x]))
    return evaluator.evaluate().get("bbox", {})


def run_prune_trees(args, results, cfg, models, inputs):
    """
    Pruning on trees_val: COCO AP and AP75, and inference time against Faster R-CNN's; and
    the AP on trees_test (other sites), which no setting was chosen on.
    """
    test_inputs = tree_inputs(cfg, "trees_test", 2 if args.quick else None, is_train=False)
    variants = {"faster": models["faster"], "builtin": models["builtin"]}
    for k, nms in PRUNE_SETTINGS:
        variants[prune_name(k, nms)] = pruned_copy(models["ours"], k, nms)
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repetitions")
    parser.add_argument("--output", default="output/benchmarks/results.json")
    parser.add_argument("--reps", type=int,
                        help="paired repetitions of the R50 setup (default 10, quick 2)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=("r50", "trees", "trees-train", "trees-prune"),
                        help="run one setup, or only the trees' training iterations or pruning")
    parser.add_argument("--train-reps", type=int,
                        help="paired training iterations of the trees setup (default 20)")
    parser.add_argument("--prune-reps", type=int,
                        help="paired inference repetitions of the pruning table (default 30)")
    parser.add_argument(
        "--cascade-weights", default="output/trees/cascade_rcnn_seed1/model_final.pth"
    )
    parser.add_argument("--faster-weights", default="output/trees/faster_rcnn_seed1/model_final.pth")
    args = parser.parse_args(argv)
    args.reps = args.reps or (2 if args.quick else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    # The trees setup's inference and ROI-head steps take 0.1-0.3 s: many more pairs
    # narrow the ratios' spread at little cost.
    args.fast_reps = 2 if args.quick else 30
    args.scaling_reps = 2 if args.quick else 20
    args.train_reps = args.train_reps or (2 if args.quick else 20)
    args.prune_reps = args.prune_reps or args.fast_reps
    args.mem_reps = 1 if args.quick else 5

    setup_logger(name="detectron2", abbrev_name="d2").setLevel("WARNING")
    torch.set_num_threads(args.threads)
    out = Path(args.output)
    results = ResultsFile(out, machine=machine(), quick=args.quick, reps=args.reps)
    start = time.perf_counter()
    if args.only in (None, "r50"):
        run_r50(args, results)
    if args.only in (None, "trees"):
        run_trees(args, results)
    if args.only == "trees-train":
        run_trees_train(args, results, *trees_models(args, results))
    if args.only == "trees-prune":
        cfgs, models = trees_models(args, results)
        inputs = tree_inputs(cfgs["ours"], "trees_val", 2 if args.quick else 10, is_train=False)
        run_prune_trees(args, results, cfgs["ours"], models, inputs)
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["wall_s"] = time.perf_counter() - start
    report = markdown(results)
    print(report)
    results["report"] = report
    print(f"\nwrote {out} ({results['wall_s']:.0f} s)")
    return results


if __name__ == "__main__":
    main()
