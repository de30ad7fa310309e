"""
ReliableTrainer: the same bits from the same command, also on a loaded machine; a run killed
with SIGKILL resumes to the weights of an uninterrupted run; a NaN loss or an unusable image
stops training naming the iteration or image, and the last good checkpoint survives; every
rank ends with the same weights, whose fingerprint is written next to them.
"""

import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from detectron2.data import get_detection_dataset_dicts
from detectron2.utils import comm

from projects.cascade.config_loader import load_config
from projects.cascade.data.resumable_loader import ResumableTrainingSampler
from projects.cascade.engine.trainer import (
    FINGERPRINT_FILE,
    ReliableTrainer,
    _WeightsInSync,
    read_weights_fingerprint,
    weights_fingerprint,
)
from tests.helpers import (
    REPO,
    TINY_CONFIG,
    checkpoint_fingerprint,
    command,
    env,
    logged_fingerprint,
    metrics,
    run,
)

_HOG = "while True: sum(i * i for i in range(10000))"


@pytest.mark.e2e
def test_the_same_command_gives_the_same_bits_also_under_load(tmp_path, trees_prepared):
    """
    README's command (a) states the sha256 of its final weights: a run must not depend on
    what else the machine does. Two torch threads, as the demo has, and its loader worker.
    """
    common = ["SOLVER.MAX_ITER", "4", "DATALOADER.NUM_WORKERS", "1", "SEED", "3"]
    two_threads = {"OMP_NUM_THREADS": "2"}
    run(*common, "OUTPUT_DIR", tmp_path / "quiet", extra_env=two_threads)
    hogs = [subprocess.Popen([sys.executable, "-c", _HOG]) for _ in range(2)]
    try:
        run(*common, "OUTPUT_DIR", tmp_path / "loaded", extra_env=two_threads)
    finally:
        for hog in hogs:
            hog.kill()
    run(*common[:-1], "4", "OUTPUT_DIR", tmp_path / "other_seed", extra_env=two_threads)

    quiet = read_weights_fingerprint(tmp_path / "quiet")
    assert quiet == checkpoint_fingerprint(tmp_path / "quiet" / "model_final.pth")
    assert quiet == logged_fingerprint(tmp_path / "quiet" / "log.txt")
    assert read_weights_fingerprint(tmp_path / "loaded") == quiet
    # The fingerprint tells runs apart: another seed gives other bits.
    assert read_weights_fingerprint(tmp_path / "other_seed") != quiet


@pytest.mark.e2e
def test_kill_between_checkpoints_then_resume_matches_uninterrupted(tmp_path, trees_prepared):
    common = ["SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "2", "SEED", "7"]
    reference = tmp_path / "uninterrupted"
    run(*common, "OUTPUT_DIR", reference)

    # The interrupted run loads data in 2 worker processes: the data order and the
    # augmentations must not depend on who maps an image, nor on the restart.
    out = tmp_path / "killed"
    opts = [*common, "DATALOADER.NUM_WORKERS", "2", "OUTPUT_DIR", out]
    proc = subprocess.Popen(
        command(*opts),
        cwd=REPO,
        env=env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    tag = out / "last_checkpoint"
    deadline = time.time() + 600
    while not (tag.exists() and tag.read_text() == "model_0000001.pth"):
        assert proc.poll() is None and time.time() < deadline, "no first checkpoint"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its data workers
    assert proc.wait() == -signal.SIGKILL
    assert tag.read_text() == "model_0000001.pth", "killed after the next checkpoint"
    assert not (out / "model_final.pth").exists()

    log = run("--resume", *opts)
    assert "Starting training from iteration 2" in log

    final = torch.load(out / "model_final.pth", weights_only=True)
    expected = torch.load(reference / "model_final.pth", weights_only=True)
    assert final["iteration"] == expected["iteration"] == 5
    assert final["model"].keys() == expected["model"].keys()
    for name, value in expected["model"].items():
        torch.testing.assert_close(final["model"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    # The scheduler carried on: same learning rate and iteration in the last log row.
    last, last_expected = metrics(out)[-1], metrics(reference)[-1]
    assert last["lr"] == last_expected["lr"] and last["iteration"] == 5


@pytest.mark.e2e
def test_nan_loss_names_the_iteration_and_keeps_the_last_checkpoint(tmp_path, trees_prepared):
    opts = ["SOLVER.CHECKPOINT_PERIOD", "1", "OUTPUT_DIR", str(tmp_path)]
    trainer = ReliableTrainer(load_config(str(REPO / TINY_CONFIG), [*opts, "SOLVER.MAX_ITER", "2"]))
    trainer.resume_or_load(resume=False)
    trainer.train()
    good = {f.name: f.read_bytes() for f in tmp_path.glob("*.pth")}
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"

    # Resumed with a zero pixel std: every input becomes inf or NaN.
    diverging = [*opts, "SOLVER.MAX_ITER", "4", "MODEL.PIXEL_STD", "[0.0, 0.0, 0.0]"]
    trainer = ReliableTrainer(load_config(str(REPO / TINY_CONFIG), diverging))
    trainer.resume_or_load(resume=True)
    # detectron2's RPN or its loss check, whichever meets the NaN first, names the iteration.
    with pytest.raises(FloatingPointError, match=r"NaN.*at iteration=2\b"):
        trainer.train()
    assert {f.name: f.read_bytes() for f in tmp_path.glob("*.pth")} == good
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"


@pytest.mark.e2e
def test_truncated_image_met_in_training_keeps_the_checkpoints(tmp_path, trees_prepared):
    """A copy of the tree datasets whose image for iteration 2 is truncated."""
    root = tmp_path / "datasets"
    (root / "trees" / "images").mkdir(parents=True)
    for f in trees_prepared.glob("*.json"):
        shutil.copy(f, root / "trees")
    for f in (trees_prepared / "images").iterdir():
        (root / "trees" / "images" / f.name).symlink_to(f)
    # The image the data stream puts first in iteration 2 (2 images per batch).
    dicts = get_detection_dataset_dicts(["trees_train"])
    sampler = ResumableTrainingSampler([0] * len(dicts), batch_size=2, seed=7)
    _, _, index = next(itertools.islice(sampler, 4, None))
    victim = root / "trees" / "images" / Path(dicts[index]["file_name"]).name
    content = victim.read_bytes()
    victim.unlink()
    victim.write_bytes(content[: len(content) // 3])

    out = tmp_path / "out"
    output = run(
        "SEED",
        "7",
        "SOLVER.MAX_ITER",
        "5",
        "SOLVER.CHECKPOINT_PERIOD",
        "1",
        "OUTPUT_DIR",
        out,
        expect_ok=False,
        extra_env={"DETECTRON2_DATASETS": str(root)},
    )
    last_line = output.strip().splitlines()[-1]
    assert re.match(
        rf"error: Image id {dicts[index]['image_id']} \({re.escape(str(victim))}\) cannot be",
        last_line,
    ), last_line
    assert (out / "last_checkpoint").read_text() == "model_0000001.pth"
    for name in ("model_0000000.pth", "model_0000001.pth"):
        torch.load(out / name, weights_only=True)


def test_weights_check_fails_when_ranks_disagree(monkeypatch, tmp_path):
    """The after-training check raises when another rank reports other weights."""
    trainer = SimpleNamespace(iter=3, max_iter=3, model=nn.Linear(2, 2))
    hook = _WeightsInSync(str(tmp_path))
    hook.trainer = trainer
    own = weights_fingerprint(trainer.model.state_dict())
    monkeypatch.setattr(comm, "all_gather", lambda digest: [digest, digest])
    hook.after_train()
    assert read_weights_fingerprint(str(tmp_path)) == own  # the file next to the weights
    (tmp_path / FINGERPRINT_FILE).unlink()
    monkeypatch.setattr(comm, "all_gather", lambda digest: [digest, "0" * 64])
    with pytest.raises(RuntimeError, match=f"different weights: \\['{own}', '0{{64}}'\\]"):
        hook.after_train()
    assert not (tmp_path / FINGERPRINT_FILE).exists()
