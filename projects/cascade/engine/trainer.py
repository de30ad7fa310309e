"""
detectron2's `DefaultTrainer`, made to run on CPU processes and to resume exactly.

Compared with `DefaultTrainer` it:

* wraps a CPU model in DistributedDataParallel without `device_ids` (detectron2's
  `create_ddp_model` passes the local rank, which DDP rejects for a CPU module), so
  `--num-gpus N MODEL.DEVICE cpu` trains N gloo processes;
* trains from a resumable data stream (:mod:`.resumable`) and seeds every step from
  (seed, iteration, rank), so kill-and-resume ends with the weights of an
  uninterrupted run; the data seed is stored in the checkpoint;
* saves and loads through :class:`SafeCheckpointer`;
* reads images through :class:`CheckedDatasetMapper`;
* checks after training that every rank holds the same weights.
"""
import hashlib
import logging
import weakref

import torch

from detectron2.data import build_detection_test_loader
from detectron2.engine import AMPTrainer, DefaultTrainer, HookBase, SimpleTrainer, TrainerBase
from detectron2.engine.defaults import create_ddp_model
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from .checkpoint import SafeCheckpointer
from ..data.dataset_mapper import CheckedDatasetMapper
from ..data.resumable_loader import build_resumable_train_loader, iteration_seed

__all__ = ["ReliableTrainer", "weights_fingerprint"]

logger = logging.getLogger(__name__)


def weights_fingerprint(state_dict):
    """sha256 over the names and exact bytes of every tensor of a state dict."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        h.update(name.encode())
        tensor = state_dict[name].detach().cpu().contiguous().reshape(-1)
        h.update(tensor.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class _WeightsInSync(HookBase):
    """
    DistributedDataParallel keeps the ranks' weights equal only if every rank runs the
    same steps on the same parameters; a rank that skipped or repeated a step would
    go on silently with other weights. Each rank logs its fingerprint; a mismatch
    fails the run.
    """

    def after_train(self):
        if self.trainer.iter < self.trainer.max_iter:
            return  # training failed; its exception is what matters
        model = self.trainer.model
        model = getattr(model, "module", model)
        digest = weights_fingerprint(model.state_dict())
        logger.info(f"Weights of rank {comm.get_rank()} after training: sha256 {digest}")
        digests = comm.all_gather(digest)
        if len(set(digests)) > 1:
            raise RuntimeError(f"The ranks ended training with different weights: {digests}")


class ReliableTrainer(DefaultTrainer):
    """`DefaultTrainer` with the changes listed in this module's docstring."""

    def __init__(self, cfg):
        # DefaultTrainer.__init__, but with the data loader, DDP wrapping and
        # checkpointer described in the module docstring.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        # SEED < 0 asks for a random seed: draw one shared by all ranks; the
        # checkpoint keeps it, so a resumed run continues the same stream.
        self.seed = cfg.SEED if cfg.SEED >= 0 else int(comm.shared_random_seed())
        data_loader, self.train_sampler = build_resumable_train_loader(
            cfg, CheckedDatasetMapper(cfg, True), self.seed
        )
        ddp_kwargs = {"broadcast_buffers": False}
        if next(model.parameters()).device.type == "cpu":
            ddp_kwargs["device_ids"] = None
        model = create_ddp_model(model, **ddp_kwargs)
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(
            model, data_loader, optimizer
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = SafeCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def build_hooks(self):
        return super().build_hooks() + [_WeightsInSync()]

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        # Continue the data stream after the last batch the checkpoint trained on.
        self.train_sampler.seed = self.seed
        self.train_sampler.start_batch = self.start_iter

    def run_step(self):
        seed_all_rng(iteration_seed(self.seed, self.iter, comm.get_rank()))
        try:
            super().run_step()
        except FloatingPointError as e:
            # detectron2 names the iteration of a NaN loss, but not of the NaN boxes its
            # RPN may meet first; name it in every case.
            if f"iteration={self.iter}" in str(e):
                raise
            raise FloatingPointError(f"{e} (at iteration={self.iter})") from e

    def state_dict(self):
        ret = super().state_dict()
        ret["seed"] = self.seed
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "seed" in state_dict:
            self.seed = state_dict["seed"]
        else:
            logger.warning(
                "The checkpoint does not record its data seed (it was not written by "
                f"ReliableTrainer); the data stream restarts with seed {self.seed}."
            )

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(
            cfg, dataset_name, mapper=CheckedDatasetMapper(cfg, False)
        )
