"""
Every entry point that reads weights (train_net.py, the tools, the exports, the experiments,
the benchmarks) refuses a checkpoint whose loading would run code: a clear error naming the
file, and nothing run.
"""

import os
import pickle
import re
import subprocess
import sys

import pytest
import torch

from projects.cascade.errors import CheckpointError
from tests.helpers import REPO, TINY_CONFIG, env, load_script

# Small enough to build in a second; every entry point below reads its weights from it.
TINY = str(REPO / TINY_CONFIG)


class _RunsACommand:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(params=["pkl", "pth"])
def malicious(request, tmp_path):
    """(a code-running checkpoint, the file its code would create)."""
    marker = tmp_path / "code_ran"
    path = tmp_path / f"model.{request.param}"
    payload = {"model": {"backbone.weight": _RunsACommand(marker)}}
    if request.param == "pkl":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, path)
    return path, marker


def _refused(call, path, marker):
    with pytest.raises(CheckpointError, match=re.escape(f"Refusing to load {path}")):
        call()
    assert not marker.exists(), "the checkpoint's code ran"


def test_the_control_runs_the_code(malicious):
    """Without the safe loader, each file does run its command: the tests below can fail."""
    path, marker = malicious
    if path.suffix == ".pkl":
        pickle.loads(path.read_bytes())
    else:
        torch.load(path, weights_only=False)
    assert marker.exists()


def test_demo(malicious, tmp_path):
    demo = load_script("tools/demo.py")
    path, marker = malicious
    argv = ["--config-file", TINY, "--input", str(REPO / "docs"), "--output", str(tmp_path)]
    _refused(lambda: demo.main([*argv, "--opts", "MODEL.WEIGHTS", str(path)]), path, marker)


def test_export(malicious, tmp_path):
    export = load_script("tools/deploy/export_model.py")
    path, marker = malicious
    argv = ["--config-file", TINY, "--format", "onnx", "--output", str(tmp_path)]
    _refused(lambda: export.main([*argv, "MODEL.WEIGHTS", str(path)]), path, marker)


@pytest.mark.parametrize("tool", ["tools/iou_analysis.py", "tools/stage_quality.py"])
def test_analysis_tools(tool, malicious, tmp_path):
    module = load_script(tool)
    path, marker = malicious
    argv = ["--config-file", TINY, "--dataset", "trees_test", "--output", str(tmp_path)]
    _refused(lambda: module.main([*argv, "MODEL.WEIGHTS", str(path)]), path, marker)


def test_experiments(malicious, tmp_path):
    runs = load_script("experiments/runs.py")
    soft_nms_and_tta = load_script("experiments/soft_nms_and_tta_trees.py")
    path, marker = malicious
    _refused(lambda: runs.evaluate(TINY, [], path, "trees_test", ["AP"]), path, marker)
    _refused(lambda: soft_nms_and_tta.one_stage_cascade_weights(path, tmp_path), path, marker)


def test_benchmarks(malicious):
    compared_models = load_script("benchmarks/compared_models.py")
    path, marker = malicious
    configs = {name: TINY_CONFIG for name in ("ours", "builtin", "faster")}
    _refused(lambda: compared_models.build_trio(configs, cascade_weights=path), path, marker)


def test_eval_memory(malicious, tmp_path, trees_prepared):
    eval_memory = load_script("benchmarks/eval_memory.py")
    path, marker = malicious
    argv = ["--config-file", TINY, "--output", str(tmp_path / "crops"), "--num-images", "2"]
    _refused(lambda: eval_memory.main([*argv, "MODEL.WEIGHTS", str(path)]), path, marker)


def test_weights_converter(malicious):
    """The converter takes only torchvision's file: the hash check refuses any other first."""
    convert = load_script("tools/convert_mobilenet_weights.py")
    path, marker = malicious
    with pytest.raises(SystemExit, match="is not torchvision's file"):
        convert.main([str(path), "--output", str(path.parent / "out.pth")])
    assert not marker.exists()


@pytest.mark.e2e
@pytest.mark.parametrize("mode", [["--eval-only"], []], ids=["eval-only", "training"])
def test_train_net(mode, malicious, tmp_path, trees_prepared):
    """In a process of its own, as users run it (its loggers stay out of the other tests)."""
    path, marker = malicious
    proc = subprocess.run(
        [sys.executable, "train_net.py", "--config-file", TINY, *mode]
        + ["MODEL.WEIGHTS", str(path), "OUTPUT_DIR", str(tmp_path / "out")],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: Refusing to load {path}")
    assert not marker.exists()
