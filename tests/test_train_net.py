"""train_net.py end to end through its command line: a few iterations on the real trees, then evaluation."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(*args):
    proc = subprocess.run(
        [sys.executable, "train_net.py", *args], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_train_then_eval_only(tmp_path, trees_prepared):
    config = ["--config-file", "configs/trees/cascade_rcnn_trees.yaml"]
    common = [
        "DATASETS.TEST", "('trees_test',)",
        "DATALOADER.NUM_WORKERS", "0",
        "OUTPUT_DIR", str(tmp_path),
    ]
    log = run(*config, *common, "SOLVER.MAX_ITER", "4", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "2")
    assert "copypaste: AP,AP50,AP75" in log
    assert (tmp_path / "model_final.pth").exists()
    assert list(tmp_path.glob("events.out.tfevents.*")), "no TensorBoard events"
    rows = [json.loads(l) for l in (tmp_path / "metrics.json").read_text().splitlines()]
    training = [r for r in rows if "total_loss" in r]
    assert training[-1]["iteration"] == 3  # 4 iterations, counted from 0
    assert "loss_box_reg_stage2" in training[0] and "bbox/AP75" in rows[-1]
    trained_ap = rows[-1]["bbox/AP"]

    log = run(*config, "--eval-only", *common, "MODEL.WEIGHTS", str(tmp_path / "model_final.pth"))
    line = log.split("copypaste: AP,AP50,AP75,APs,APm,APl")[1].splitlines()[1]
    # copypaste prints 4 decimals
    assert float(line.split("copypaste: ")[1].split(",")[0]) == round(trained_ap, 4)
