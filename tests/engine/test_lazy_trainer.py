"""
train_net.py with a LazyConfig (configs/trees/cascade_rcnn_trees.py): the features of the
YAML path, end to end: training with evaluation at AP60-AP90, the per-stage table, exact
resume, --eval-only with expected results, two CPU processes, and one-line errors.
"""

import json
import shutil

import pytest

from projects.cascade.engine.trainer import read_weights_fingerprint
from tests.helpers import (
    LAZY_CONFIG,
    TINY_LAZY,
    checkpoint_fingerprint,
    logged_fingerprint,
    metrics,
    rendezvous,
    run,
)

pytestmark = pytest.mark.e2e


def _run(*overrides, flags=(), **kwargs):
    """train_net.py with the tiny LazyConfig; flags (--resume, ...) go before the overrides."""
    return run(*flags, *TINY_LAZY, *overrides, config=LAZY_CONFIG, **kwargs)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, trees_prepared):
    """4 iterations with a checkpoint every 2, evaluated at the end with the per-stage table."""
    out = tmp_path_factory.mktemp("lazy")
    log = _run(
        "train.max_iter=4",
        "train.checkpointer.period=2",
        "test.cascade_stage_eval=True",
        f"train.output_dir={out}",
    )
    return out, log


def test_trains_and_evaluates_like_the_yaml_path(trained):
    out, log = trained
    final = [row for row in metrics(out) if "bbox/AP" in row][-1]
    for metric in ("AP", "AP50", "AP60", "AP70", "AP75", "AP80", "AP90"):
        assert f"bbox/{metric}" in final
    assert "cascade_stages/1~3/AP" in final and "cascade_stages/2/AP90" in final
    table = json.loads((out / "inference" / "trees_test" / "cascade_stages.json").read_text())
    assert list(table["rows"]) == ["1", "2", "3", "1~2", "1~3"]
    assert read_weights_fingerprint(out) == checkpoint_fingerprint(out / "model_final.pth")
    assert (out / "config.yaml").exists() and "eta:" in log


def test_resume_matches_the_uninterrupted_run(trained, tmp_path):
    """Resumed from the uninterrupted run's checkpoint after 2 of 4 iterations: the same weights."""
    out, _ = trained
    shutil.copy(out / "model_0000001.pth", tmp_path / "model_0000001.pth")
    (tmp_path / "last_checkpoint").write_text("model_0000001.pth")
    log = _run(
        "train.max_iter=4",
        "train.checkpointer.period=2",
        f"train.output_dir={tmp_path}",
        "dataloader.test.dataset.names=[]",
        flags=["--resume"],
    )
    assert "Starting training from iteration 2" in log
    assert checkpoint_fingerprint(tmp_path / "model_final.pth") == checkpoint_fingerprint(
        out / "model_final.pth"
    )


def test_eval_only_checks_expected_results(trained, tmp_path):
    out, _ = trained
    ap = [row for row in metrics(out) if "bbox/AP" in row][-1]["bbox/AP"]
    weights = out / "model_final.pth"
    log = _run(
        f"train.init_checkpoint={weights}",
        f"train.output_dir={tmp_path}",
        f"test.expected_results=[[bbox,AP,{ap},0.01]]",
        flags=["--eval-only"],
    )
    assert "test.expected_results: all 1 checks passed." in log
    log = _run(
        f"train.init_checkpoint={weights}",
        f"train.output_dir={tmp_path}",
        f"test.expected_results=[[bbox,AP,{ap + 5},0.01]]",
        flags=["--eval-only"],
        expect_ok=False,
    )
    assert "error: test.expected_results: 1 of 1 checks failed:" in log


def test_two_cpu_processes_train_in_step(trained, tmp_path, trees_prepared):
    log = _run(
        "train.max_iter=2",
        "dataloader.train.total_batch_size=4",
        f"train.output_dir={tmp_path}",
        flags=["--num-gpus", 2, "--dist-url", rendezvous(tmp_path)],
    )
    fingerprints = set(
        logged_fingerprint(f) for f in [tmp_path / "log.txt", tmp_path / "log.txt.rank1"]
    )
    assert fingerprints == {checkpoint_fingerprint(tmp_path / "model_final.pth")}, log[-2000:]


@pytest.mark.parametrize(
    "args, message",
    [
        (["train.max_iters=3"], "has no key 'max_iters' in 'train'"),
        (["model.roi_heads.test_score=max"], "CascadeRCNNROIHeads argument test_score = 'max'"),
        (
            ["model.roi_heads.ignore_iof_thresh=0.5"],
            "needs dataloader.train.mapper.keep_crowd_regions=True",
        ),
    ],
)
def test_bad_override_is_one_line(args, message):
    log = run(*args, config=LAZY_CONFIG, expect_ok=False)
    assert log.strip().splitlines()[-1].startswith("error: ") and message in log.splitlines()[-1]
