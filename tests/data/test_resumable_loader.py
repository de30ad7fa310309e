"""ResumableTrainingSampler: detectron2's data stream, resumable in the middle."""

import itertools

from detectron2.data.common import AspectRatioGroupedDataset
from detectron2.data.samplers import TrainingSampler
from detectron2.utils import comm

from projects.cascade.data.resumable_loader import ResumableTrainingSampler


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
            monkeypatch.setattr(comm, "get_rank", lambda rank=rank: rank)
            monkeypatch.setattr(comm, "get_world_size", lambda size=world_size: size)
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
