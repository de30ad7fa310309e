"""
Faults during training: a run killed with SIGKILL resumes to the weights of an
uninterrupted run; a kill in the middle of a save leaves the previous checkpoint
usable; corrupt checkpoints give an error naming the file.
"""
import itertools
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from detectron2.data.common import AspectRatioGroupedDataset
from detectron2.data.samplers import TrainingSampler
from detectron2.utils import comm

from projects.cascade.engine.checkpoint import SafeCheckpointer
from projects.cascade.errors import CheckpointError
from projects.cascade.data.resumable_loader import ResumableTrainingSampler
from tests.train_cli import REPO, TINY, command, env, metrics, run


def _batches(sampler, n, batch_size):
    items = list(itertools.islice(sampler, n * batch_size))
    return [items[k : k + batch_size] for k in range(0, len(items), batch_size)]


def test_sampler_is_detectron2_stream_and_resumes_mid_stream(monkeypatch):
    # 13 images of both orientations: batches straddle epochs and aspect buckets.
    sizes = [(500, 400) if (i * 7) % 3 else (300, 400) for i in range(13)]
    groups = [0 if w > h else 1 for w, h in sizes]
    dicts = [{"width": w, "height": h, "index": i} for i, (w, h) in enumerate(sizes)]
    for world_size in (1, 2):
        for rank in range(world_size):
            monkeypatch.setattr(comm, "get_rank", lambda: rank)
            monkeypatch.setattr(comm, "get_world_size", lambda: world_size)
            # detectron2: TrainingSampler, then AspectRatioGroupedDataset on this rank.
            stream = (dicts[i] for i in TrainingSampler(13, seed=5))
            expected = [
                [d["index"] for d in batch]
                for batch in itertools.islice(AspectRatioGroupedDataset(stream, 3), 20)
            ]
            sampler = ResumableTrainingSampler(groups, batch_size=3, seed=5)
            full = _batches(sampler, 20, 3)
            assert [[index for _, _, index in b] for b in full] == expected

            sampler.start_batch = 7  # a run resumed after 7 iterations
            assert _batches(sampler, 13, 3) == full[7:]


def test_kill_between_checkpoints_then_resume_matches_uninterrupted(tmp_path, trees_prepared):
    common = [*TINY, "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "2", "SEED", "7"]
    reference = tmp_path / "uninterrupted"
    run(*common, "OUTPUT_DIR", reference)

    # The interrupted run loads data in 2 worker processes: the data order and the
    # augmentations must not depend on who maps an image, nor on the restart.
    out = tmp_path / "killed"
    opts = [*common, "DATALOADER.NUM_WORKERS", "2", "OUTPUT_DIR", out]
    proc = subprocess.Popen(
        command(*opts), cwd=REPO, env=env(), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
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


_DIE_DURING_SECOND_SAVE = """
import os, signal, sys, torch
from torch import nn
from detectron2.checkpoint import DetectionCheckpointer
from projects.cascade.engine.checkpoint import SafeCheckpointer

checkpointer_class = {"safe": SafeCheckpointer, "detectron2": DetectionCheckpointer}[sys.argv[2]]
model = nn.Linear(8, 8)
nn.init.constant_(model.weight, 1.0)
checkpointer = checkpointer_class(model, save_dir=sys.argv[1])
checkpointer.save("model_final")  # a finished run

def killed_while_writing(obj, f):
    f.write(b"PK\\x03\\x04" + b"\\0" * 1000)  # the first bytes of a zip
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)

# The run is resumed with a larger SOLVER.MAX_ITER and saves model_final again.
model.weight.data.fill_(2.0)
torch.save = killed_while_writing
checkpointer.save("model_final")
"""


def _kill_during_save(folder, checkpointer):
    folder.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", _DIE_DURING_SECOND_SAVE, str(folder), checkpointer],
        cwd=REPO, env=env(), capture_output=True, text=True,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def test_kill_during_save_leaves_last_checkpoint_loadable(tmp_path):
    # Control: detectron2's checkpointer overwrites model_final.pth in place, so the
    # same kill leaves a truncated file that `last_checkpoint` points to.
    _kill_during_save(tmp_path / "detectron2", "detectron2")
    with pytest.raises(Exception):
        torch.load(tmp_path / "detectron2" / "model_final.pth", weights_only=True)

    _kill_during_save(tmp_path / "safe", "safe")
    for f in (tmp_path / "safe").glob("*.pth"):
        torch.load(f, weights_only=True)  # no truncated checkpoint anywhere
    model = nn.Linear(8, 8)
    checkpointer = SafeCheckpointer(model, save_dir=str(tmp_path / "safe"))
    checkpointer.resume_or_load("", resume=True)
    assert torch.equal(model.weight, torch.ones(8, 8)), "the previous model_final must load"


def _write_checkpoint(folder, name, content):
    path = folder / name
    path.write_bytes(content)
    (folder / "last_checkpoint").write_text(name)
    return path


def _good_checkpoint_bytes(tmp_path):
    SafeCheckpointer(nn.Linear(8, 8), save_dir=str(tmp_path)).save("good")
    return (tmp_path / "good.pth").read_bytes()


@pytest.mark.parametrize(
    "name, content",
    [
        ("model_0000009.pth", lambda good: good[: len(good) // 2]),  # truncated
        ("model_0000009.pth", lambda good: b""),  # empty
        ("model_0000009.pth", lambda good: b"not a checkpoint at all" * 10),
        ("model_0000009.pkl", lambda good: b"\x80\x02}q\x00(X\x05"),  # truncated pickle
    ],
)
def test_corrupt_checkpoint_is_a_clear_error_naming_the_file(tmp_path, name, content):
    path = _write_checkpoint(tmp_path, name, content(_good_checkpoint_bytes(tmp_path)))
    checkpointer = SafeCheckpointer(nn.Linear(8, 8), save_dir=str(tmp_path))
    with pytest.raises(CheckpointError, match=f"Cannot load checkpoint {path}"):
        checkpointer.resume_or_load("", resume=True)


def test_nonfinite_weights_do_not_replace_the_last_good_checkpoint(tmp_path, caplog):
    model = nn.Linear(8, 8)
    checkpointer = SafeCheckpointer(model, save_dir=str(tmp_path))
    checkpointer.save("model_0000001")
    good = (tmp_path / "model_0000001.pth").read_bytes()
    model.bias.data[3] = float("nan")
    checkpointer.save("model_final")
    assert not (tmp_path / "model_final.pth").exists()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert (tmp_path / "model_0000001.pth").read_bytes() == good
    assert "parameter bias holds NaN or Inf" in caplog.text
