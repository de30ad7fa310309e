"""The tree-crown datasets as configs/trees/Base-Trees-MobileNetV2-FPN.yaml reads them."""

from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.data import transforms as T

from projects.cascade.evaluation import COCOEvaluatorAtIoUs

dataloader = model_zoo.get_config("common/data/coco.py").dataloader
dataloader.train.dataset.names = "trees_train"
dataloader.train.mapper.image_format = "RGB"
dataloader.train.mapper.use_instance_mask = False
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(
        short_edge_length=(352, 384, 416, 448), max_size=448, sample_style="choice"
    ),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.train.total_batch_size = 4
dataloader.train.num_workers = 1
dataloader.test.dataset.names = "trees_val"
dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=400, max_size=400)
]
dataloader.test.num_workers = 1
dataloader.evaluator = L(COCOEvaluatorAtIoUs)(dataset_name="${..test.dataset.names}")
