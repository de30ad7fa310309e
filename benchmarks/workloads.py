"""
What the benchmarks feed the models (a random image, tree tiles, synthetic proposals) and
the steps they time on it (ROI heads alone, inference, one training iteration). Every step
takes the repetition's index, as `harness.paired_times` calls it.
"""

import copy
import random

import numpy as np
import torch

from detectron2.data import DatasetCatalog
from detectron2.data.dataset_mapper import DatasetMapper
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage


# ----------------------------------------------------------------------------- inputs
def random_image(height, width, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, height, width), generator=g, dtype=torch.uint8)
    return {"image": image.float(), "height": height, "width": width}


def tree_inputs(cfg, split, num, is_train):
    dicts = DatasetCatalog.get(split)[:num]
    mapper = DatasetMapper(cfg, is_train=is_train)
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    return [mapper(copy.deepcopy(d)) for d in dicts]


def synthetic_proposals(image_size, num, seed=0):
    """`num` random boxes 8-160 px wide inside the image, with random objectness."""
    h, w = image_size
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(num, 2, generator=g) * torch.tensor([w, h])
    wh = 8 + torch.rand(num, 2, generator=g) * 152
    boxes = torch.cat([xy, xy + wh], dim=1)
    p = Instances(image_size)
    p.proposal_boxes = Boxes(boxes)
    p.proposal_boxes.clip(image_size)
    p.objectness_logits = torch.randn(num, generator=g)
    return p


# ----------------------------------------------------------------------------- timed steps
def roi_fn(model, images, features, proposals):
    def run(_):
        with torch.no_grad():
            model.roi_heads(images, features, proposals)

    return run


def infer_fn(model, inputs):
    def run(r):
        with torch.no_grad():
            model([inputs[r % len(inputs)]])

    return run


def train_fn(model, optimizer, batch):
    def run(r):
        torch.manual_seed(r)  # the same proposal sampling for every model
        with EventStorage():
            losses = model(batch)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return run
