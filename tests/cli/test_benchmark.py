"""
benchmarks/benchmark_cascade.py runs end to end (--quick) and writes its JSON (no timing is
checked); the pruning grid's settings act on the models it times.
"""

import json
import subprocess
import sys

import pytest

from projects.cascade.modeling.stage_outputs import features_and_proposals
from tests.helpers import REPO, TINY_CONFIG, load_script

MODELS = {"ours", "builtin", "faster"}
# The main time rows also show ours on torchvision's single-threaded RoIAlign.
TIMED = MODELS | {"ours_tv"}


@pytest.mark.e2e
def test_quick_benchmark_writes_every_section(trees_prepared, tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [
            sys.executable,
            "benchmarks/benchmark_cascade.py",
            "--quick",
            "--output",
            str(out),
            "--cascade-weights",
            "",
            "--faster-weights",
            "",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| r50/inference |" in proc.stdout and "ours_tv / builtin" in proc.stdout
    results = json.loads(out.read_text())

    assert results["quick"] is True
    assert {"cpu", "torch_threads", "loadavg_1_5_15"} <= results["machine"].keys()
    for key in (
        "r50/inference",
        "r50/roi_heads",
        "trees/inference",
        "trees/roi_heads",
        "trees/train_iter",
    ):
        assert results[key].keys() == TIMED, key
        assert results[key]["ours"]["median_ms"] > 0
        assert {"x_builtin", "x_faster"} <= results[key]["ours"].keys()
        assert "x_builtin" in results[key]["ours_tv"]
    for key in ("r50/inference_peak_rss", "trees/inference_peak_rss", "trees/train_peak_rss"):
        assert results[key].keys() == MODELS, key
        assert "median_mb" in results[key]["ours"]
    for setup in ("r50", "trees"):
        flops = results[f"{setup}/params_flops"]
        assert flops.keys() == MODELS
        # Same weights: ours and the built-in have the same parameters and FLOPs.
        assert flops["ours"]["params_M"] == flops["builtin"]["params_M"]
        assert flops["ours"]["roi_heads_params_M"] > flops["faster"]["roi_heads_params_M"]
        assert flops["ours"]["gflops"] > 0
    for key in ("trees/roi_heads_by_proposals", "trees/roi_heads_by_stages"):
        assert len(results[key]) >= 2
        assert all(row.keys() == MODELS for row in results[key].values())
    # The random R50's RPN, its box deltas zeroed, gives the ROI heads more than one box.
    assert results["r50/num_proposals"] > 1
    prune = results["trees/prune"]
    assert {"faster", "builtin", "off", "k=100", "k=500"} <= prune.keys()
    assert {"nms=0.7", "nms=0.7,k=150"} <= prune.keys()
    assert {
        "AP",
        "AP75",
        "test_AP",
        "median_ms",
        "x_faster",
        "overhead_vs_off",
        "overhead_vs_builtin",
    } <= prune["k=100"].keys()
    assert {"faster", "builtin", "off", "k=100"} <= results["r50/prune_roi_heads"].keys()


def test_pruning_variants_prune(trees_prepared):
    """Each pruned row of the grid sends fewer boxes to stage 2 than "off", which sends all."""
    pruning_grid = load_script("benchmarks/pruning_grid.py")
    compared_models = load_script("benchmarks/compared_models.py")
    workloads = load_script("benchmarks/workloads.py")
    _, models = compared_models.build_trio({name: TINY_CONFIG for name in MODELS})
    variants = pruning_grid.pruning_variants(models, TINY_CONFIG)
    image = workloads.random_image(160, 160)
    images, features, _ = features_and_proposals(models["builtin"], [image])
    proposals = [workloads.synthetic_proposals(images.image_sizes[0], 600)]
    boxes_into_stage_2 = {}
    for name in [pruning_grid.prune_name(*s) for s in pruning_grid.PRUNE_SETTINGS]:
        seen = []
        stage_2 = variants[name].roi_heads.box_head[1]
        hook = stage_2.register_forward_pre_hook(
            lambda module, x, seen=seen: seen.append(len(x[0]))
        )
        workloads.roi_fn(variants[name], images, features, proposals)(0)
        hook.remove()
        boxes_into_stage_2[name] = seen[0]
    assert boxes_into_stage_2["off"] == 600
    for name, count in boxes_into_stage_2.items():
        if name != "off":
            assert count < 600, (name, boxes_into_stage_2)
    assert boxes_into_stage_2["k=100"] == 100 and boxes_into_stage_2["k=500"] == 500
