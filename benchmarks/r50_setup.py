"""
The R50-FPN setup: random weights (a ResNet-18 in a quick run), one random image, the RPN
proposing its anchors. Times inference and the ROI heads alone, measures peak memory,
counts parameters and FLOPs, and times the ROI heads at every pruning setting.
"""

import torch

from compared_models import build_trio, trio
from fvcore_counts import section_params_flops
from harness import paired_memory, paired_times, summarize
from projects.cascade.modeling.stage_outputs import features_and_proposals
from pruning_grid import add_overheads, pruning_variants
from workloads import infer_fn, random_image, roi_fn

R50_CONFIGS = {
    "ours": "configs/cascade_rcnn_R_50_FPN_1x.yaml",
    "builtin": "configs/cascade_rcnn_R_50_FPN_1x.yaml",
    "faster": "configs/faster_rcnn_R_50_FPN_1x.yaml",
}


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
    variants = pruning_variants(models, R50_CONFIGS["ours"], **overrides)
    fns = {n: roi_fn(m, images, features, proposals) for n, m in variants.items()}
    timing = summarize(paired_times(fns, reps, warm))
    add_overheads(timing)
    results["r50/prune_roi_heads"] = {"num_proposals": len(proposals[0]), **timing}
