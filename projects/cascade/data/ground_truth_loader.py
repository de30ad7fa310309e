"""A test-time loader that keeps the annotations, for analyses that measure boxes against them."""

from detectron2.data import DatasetMapper, build_detection_test_loader
from detectron2.data import transforms as T

__all__ = ["ground_truth_loader"]


def ground_truth_loader(cfg, dataset):
    """Images resized as at test time, with their annotations (the test mapper drops them)."""
    mapper = DatasetMapper(
        is_train=True,
        augmentations=[T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)],
        image_format=cfg.INPUT.FORMAT,
        use_instance_mask=cfg.MODEL.MASK_ON,
        instance_mask_format=cfg.INPUT.MASK_FORMAT,
    )
    return build_detection_test_loader(cfg, dataset, mapper=mapper)
