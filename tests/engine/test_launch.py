"""
engine/launch.py: load_config and check_launch stop a bad config file, override or flag with
one message naming it; end_worker ends a worker of detectron2's `launch` cleanly.
"""

import atexit
from argparse import Namespace
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from detectron2.engine import launch
from detectron2.utils import comm

from projects.cascade.config_loader import load_config
from projects.cascade.engine.launch import check_launch, end_worker
from projects.cascade.errors import ConfigError
from tests.helpers import CONFIG, REPO, rendezvous, run


def _yaml(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(f'_BASE_: "{REPO / CONFIG}"\n{text}')
    return str(path)


@pytest.mark.parametrize(
    "yaml_text, opts, message",
    [
        ("MODEL:\n  ROI_HEADS: [unclosed\n", [], r"(?s)bad\.yaml is not valid YAML.*line 3"),
        ("MODEL:\n  ROI_HEADZ:\n    NUM_CLASSES: 2\n", [], r"config key: MODEL\.ROI_HEADZ"),
        ("", ["SOLVER.MAX_ITERS", "10"], r"command-line overrides: Non-existent key: SOLVER\.MAX"),
        ("SOLVER:\n  MAX_ITER: ten\n", [], r"Type mismatch .* for config key: SOLVER\.MAX_ITER"),
        ("", ["SOLVER.BASE_LR"], r"command-line overrides: Override list has odd length"),
        (  # cascade lists of different lengths
            "",
            ["MODEL.ROI_BOX_CASCADE_HEAD.IOUS", "[0.5, 0.6]"],
            r"bad\.yaml: MODEL\.ROI_BOX_CASCADE_HEAD\.BBOX_REG_WEIGHTS has 3 entries but "
            r"MODEL\.ROI_BOX_CASCADE_HEAD\.IOUS has 2",
        ),
    ],
    ids=[
        "malformed-yaml",
        "unknown-key",
        "unknown-override",
        "wrong-type",
        "odd-overrides",
        "cascade-lengths",
    ],
)
def test_bad_config_names_the_key(tmp_path, yaml_text, opts, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_yaml(tmp_path, yaml_text), opts)


def test_stage_eval_needs_the_cascade_heads(tmp_path):
    yaml_file = _yaml(tmp_path, "")
    with pytest.raises(
        ConfigError,
        match="TEST.CASCADE_STAGE_EVAL True needs CascadeRCNNROIHeads, "
        "not MODEL.ROI_HEADS.NAME: StandardROIHeads",
    ):
        load_config(
            yaml_file,
            ["MODEL.ROI_HEADS.NAME", "StandardROIHeads", "TEST.CASCADE_STAGE_EVAL", "True"],
        )
    load_config(yaml_file, ["MODEL.ROI_HEADS.NAME", "StandardROIHeads"])  # off: any heads


def test_unknown_roi_heads_name(tmp_path):
    with pytest.raises(ConfigError, match="MODEL.ROI_HEADS.NAME = 'Cascade' is not registered"):
        load_config(_yaml(tmp_path, ""), ["MODEL.ROI_HEADS.NAME", "Cascade"])


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match=f"Config file {tmp_path}/nope.yaml does not exist"):
        load_config(str(tmp_path / "nope.yaml"), [])


def _args(num_gpus, num_machines=1):
    return Namespace(num_gpus=num_gpus, num_machines=num_machines)


def test_num_gpus_without_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    cuda_cfg = load_config(str(REPO / CONFIG), ["MODEL.DEVICE", "cuda"])
    cpu_cfg = load_config(str(REPO / CONFIG), ["MODEL.DEVICE", "cpu"])
    with pytest.raises(ConfigError, match=r"--num-gpus 2 .* torch sees 0\. Add `MODEL.DEVICE cpu`"):
        check_launch(_args(2), cuda_cfg)
    check_launch(_args(2), cpu_cfg)  # the CPU path
    with pytest.raises(ConfigError, match="IMS_PER_BATCH = 4 does not divide among 3"):
        check_launch(_args(3), cpu_cfg)
    amp_cfg = load_config(str(REPO / CONFIG), ["MODEL.DEVICE", "cpu", "SOLVER.AMP.ENABLED", "True"])
    with pytest.raises(ConfigError, match="SOLVER.AMP.ENABLED True needs MODEL.DEVICE cuda"):
        check_launch(_args(1), amp_cfg)
    # CPU processes next to GPUs: detectron2's launch would pick NCCL for CPU tensors.
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match="CUDA_VISIBLE_DEVICES="):
        check_launch(_args(2), cpu_cfg)


@pytest.mark.e2e
def test_num_gpus_without_gpus_from_the_command_line(tmp_path):
    assert torch.cuda.device_count() == 0, "this test needs a machine without GPUs"
    output = run("--num-gpus", "2", "MODEL.DEVICE", "cuda", "OUTPUT_DIR", tmp_path, expect_ok=False)
    assert "error: --num-gpus 2 with MODEL.DEVICE 'cuda' needs 2 GPU(s)" in output
    assert "Traceback" not in output


class _MarksFinalization:
    """Writes its file when Python's shutdown frees it."""

    def __init__(self, path):
        self.path = str(path)

    def __del__(self, _open=open):  # module globals may be gone by then
        with _open(self.path, "w") as f:
            f.write("finalized")


def _gather_then_end(out_dir):
    rank = comm.get_rank()
    # comm.all_gather opens detectron2's extra gloo group, as evaluation does.
    assert comm.all_gather(rank) == [0, 1]
    atexit.register(
        lambda: Path(out_dir, f"atexit{rank}").write_text(f"initialized={dist.is_initialized()}")
    )
    global _FINALIZATION_MARK
    _FINALIZATION_MARK = _MarksFinalization(Path(out_dir, f"finalized{rank}"))
    end_worker()


@pytest.mark.e2e
def test_workers_end_without_interpreter_shutdown(tmp_path):
    """
    A worker closes its process group and runs its exit handlers, then skips the shutdown
    in which torch's C++ threads could abort it.
    """
    launch(_gather_then_end, 2, dist_url=rendezvous(tmp_path), args=(tmp_path,))
    for rank in (0, 1):
        assert (tmp_path / f"atexit{rank}").read_text() == "initialized=False"
        assert not (tmp_path / f"finalized{rank}").exists()
