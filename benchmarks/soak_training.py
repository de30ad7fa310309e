"""
The soak's training phase: the tree-crown recipe shrunk to the tests' tiny model, trained by
`ReliableTrainer` as `train_net.py` trains it (resumable data stream with its loader
workers, hooks, LR schedule, checkpointer, metrics writers), with evaluation off.
"""

import sys
from pathlib import Path

from detectron2.engine import HookBase

from projects.cascade.config_loader import load_config
from projects.cascade.engine.trainer import ReliableTrainer
from soak_windows import WindowRecorder

CONFIG = Path(__file__).resolve().parents[1] / "configs/trees/cascade_rcnn_trees_tiny.yaml"


def soak_config(iterations, workers, output_dir):
    """The tests' tiny tree-crown recipe, for `iterations` steps."""
    return load_config(
        str(CONFIG),
        [
            "DATALOADER.NUM_WORKERS",
            str(workers),
            # The recipe's 0.02 is for 4 images per batch; halved with the batch (linear
            # scaling), so that a long soak does not diverge into a NaN loss.
            "SOLVER.BASE_LR",
            "0.01",
            "SOLVER.MAX_ITER",
            str(iterations),
            # The recipe's schedule, stretched to the soak's length.
            "SOLVER.STEPS",
            f"({int(iterations * 0.7)}, {int(iterations * 0.9)})",
            # Rare but present: one checkpoint half-way, and model_final.
            "SOLVER.CHECKPOINT_PERIOD",
            str(max(iterations // 2, 1)),
            "TEST.EVAL_PERIOD",
            "0",
            "OUTPUT_DIR",
            str(output_dir),
        ],
    )


def metrics_history_mib(storage):
    """
    What detectron2's EventStorage holds of the scalars logged so far, in MiB. Each
    scalar's HistoryBuffer keeps up to a million (value, iteration) pairs, so this grows
    with every step by design; the soak sets RSS growth against it.
    """
    size = 0
    for buffer in storage.histories().values():
        pairs = buffer.values()
        size += sys.getsizeof(pairs)
        size += sum(sys.getsizeof(p) + sys.getsizeof(p[0]) + sys.getsizeof(p[1]) for p in pairs)
    return size / 2**20


class SoakProbe(HookBase):
    """Registered after the trainer's own hooks, so that a step's time includes theirs."""

    def __init__(self, window):
        self.recorder = WindowRecorder(window, extra=self._metrics_history)

    def before_train(self):
        self.recorder.start()

    def after_step(self):
        self.recorder.step_done()

    def _metrics_history(self):
        storage = self.trainer.storage
        return {
            "metrics_scalars": len(storage.histories()),
            "metrics_history_mib": metrics_history_mib(storage),
        }


def run_training_soak(iterations, window, workers, output_dir):
    """Train; return (the windows, the trained model, its config)."""
    cfg = soak_config(iterations, workers, output_dir)
    trainer = ReliableTrainer(cfg)
    trainer.resume_or_load(resume=False)
    probe = SoakProbe(window)
    trainer.register_hooks([probe])
    trainer.train()
    return probe.recorder.windows, trainer.model, cfg
