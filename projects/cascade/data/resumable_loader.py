"""
A training data stream that a resumed run continues exactly where the killed run
stopped: the same images, in the same batches, with the same augmentations.

detectron2's `TrainingSampler` restarts its seeded stream from the beginning on every
run, `AspectRatioGroupedDataset` keeps half-filled batches in memory, and augmentations
draw from each loader worker's RNG. None of that survives a restart. Here:

* `ResumableTrainingSampler` forms the batches from indices alone (the same shuffle and
  the same aspect-ratio grouping as detectron2), so skipping the batches already
  trained on costs no image loading;
* each sample is mapped under an RNG seeded from (seed, its position in the stream), so
  its augmentation does not depend on which worker, or which run, maps it;
* `iteration_seed` gives every training step its own seed, so the model's random
  sampling (RPN and ROI subsampling) does not depend on what ran before the step.
"""

import contextlib
import itertools
import random

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from detectron2.data import DatasetFromList, get_detection_dataset_dicts
from detectron2.data.build import build_batch_data_loader
from detectron2.utils import comm

from ..errors import ConfigError

__all__ = [
    "ResumableTrainingSampler",
    "build_resumable_train_loader",
    "iteration_seed",
    "resumable_loader_arguments",
]

# Distinct first words keep the seeds of samples and of steps from ever colliding.
_SAMPLE, _STEP = 0, 1


def _derive_seed(*words):
    return int(np.random.SeedSequence(list(words)).generate_state(1)[0])


def iteration_seed(seed, iteration, rank):
    """The seed of one training step on one rank."""
    return _derive_seed(seed, _STEP, iteration, rank)


class ResumableTrainingSampler(Sampler):
    """
    Yields ``(seed, position, index)`` for this rank, batch after batch, starting at
    batch `start_batch`. `position` is the sample's place in the global stream.

    The stream is detectron2's: ``shuffle(range(size)) + shuffle(range(size)) + ...``
    from a generator seeded with `seed`, element i going to rank ``i % world_size``.
    Each rank then groups its samples into batches of `batch_size` as
    `AspectRatioGroupedDataset` does (landscape and portrait images apart).

    `seed` and `start_batch` are read when iteration starts (in each loader worker),
    so the trainer sets them after loading a checkpoint.
    """

    def __init__(self, aspect_groups, batch_size, seed):
        """
        Args:
            aspect_groups (list[int]): the group of each dataset item (0: wider than tall,
                1: otherwise); all zeros turns grouping off.
            batch_size (int): images per batch on this rank.
            seed (int): must be the same on every rank.
        """
        self._groups = aspect_groups
        self._batch_size = batch_size
        self._rank = comm.get_rank()
        self._world_size = comm.get_world_size()
        self.seed = seed
        self.start_batch = 0

    def __iter__(self):
        for batch in itertools.islice(self._batches(), self.start_batch, None):
            for position, index in batch:
                yield self.seed, position, index

    def _stream(self):
        g = torch.Generator()
        g.manual_seed(self.seed)
        position = 0
        while True:
            for index in torch.randperm(len(self._groups), generator=g).tolist():
                if position % self._world_size == self._rank:
                    yield position, index
                position += 1

    def _batches(self):
        buckets = ([], [])
        for position, index in self._stream():
            bucket = buckets[self._groups[index]]
            bucket.append((position, index))
            if len(bucket) == self._batch_size:
                yield bucket[:]
                del bucket[:]


@contextlib.contextmanager
def _seeded_cpu_rngs(seed):
    """
    Seed python's, numpy's and torch's CPU generators for the block, then put their
    states back: with DATALOADER.NUM_WORKERS 0 samples are mapped in the training
    process, and must leave the model's random stream as they found it.
    """
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed)
        torch.random.default_generator.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class _SeededMapDataset(Dataset):
    """Maps item `index` under RNGs seeded from (seed, position); keys come from the sampler."""

    def __init__(self, dataset, mapper):
        self._dataset = dataset
        self._mapper = mapper

    def __len__(self):
        return len(self._dataset)

    def __getitem__(self, key):
        seed, position, index = key
        with _seeded_cpu_rngs(_derive_seed(seed, _SAMPLE, position)):
            return self._mapper(self._dataset[index])


def build_resumable_train_loader(
    dataset, *, mapper, total_batch_size, seed, aspect_ratio_grouping=True, num_workers=0
):
    """
    detectron2's `build_detection_train_loader` with its default `TrainingSampler`, but
    resumable. The arguments are that function's (a list of dataset dicts), plus `seed`.

    Returns:
        (data_loader, sampler): set ``sampler.start_batch`` (and ``sampler.seed``, if
        resuming) before the loader is first iterated.
    """
    if aspect_ratio_grouping:
        groups = [0 if d["width"] > d["height"] else 1 for d in dataset]
    else:
        groups = [0] * len(dataset)
    # build_batch_data_loader checks that the total batch divides among the processes.
    batch_size = total_batch_size // comm.get_world_size()
    sampler = ResumableTrainingSampler(groups, batch_size, seed)
    loader = build_batch_data_loader(
        _SeededMapDataset(DatasetFromList(dataset, copy=False), mapper),
        sampler,
        total_batch_size,
        aspect_ratio_grouping=False,  # the sampler has grouped the batches already
        num_workers=num_workers,
        # The loader draws its workers' base seed when it is first iterated, inside a
        # training step: from a generator of its own, not from the step's RNG stream.
        seed=seed,
    )
    return loader, sampler


def resumable_loader_arguments(cfg, mapper):
    """The arguments of `build_resumable_train_loader` (but the seed) that a YAML config gives."""
    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        raise ConfigError(
            f"DATALOADER.SAMPLER_TRAIN = {cfg.DATALOADER.SAMPLER_TRAIN!r}: the resumable "
            "training stream supports 'TrainingSampler' only."
        )
    dataset = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN,
        filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE
        if cfg.MODEL.KEYPOINT_ON
        else 0,
        proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
    )
    return {
        "dataset": dataset,
        "mapper": mapper,
        "total_batch_size": cfg.SOLVER.IMS_PER_BATCH,
        "aspect_ratio_grouping": cfg.DATALOADER.ASPECT_RATIO_GROUPING,
        "num_workers": cfg.DATALOADER.NUM_WORKERS,
    }
