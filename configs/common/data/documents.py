"""The document sets as configs/documents/Base-Documents-MobileNetV2-FPN.yaml reads them."""

from detectron2 import model_zoo
from detectron2.config import LazyCall as L

from projects.cascade.evaluation import COCOEvaluatorAtIoUs

dataloader = model_zoo.get_config("common/data/coco.py").dataloader
dataloader.train.dataset.names = "documents_train"
dataloader.train.mapper.image_format = "RGB"
dataloader.train.mapper.use_instance_mask = False
# Native resolution and no flip: the boxes are exact to the rendered pixel, and mirrored
# text is no document.
dataloader.train.mapper.augmentations = []
dataloader.train.total_batch_size = 4
dataloader.train.num_workers = 1
dataloader.test.dataset.names = "documents_val"
dataloader.test.mapper.augmentations = []
dataloader.test.num_workers = 1
dataloader.evaluator = L(COCOEvaluatorAtIoUs)(dataset_name="${..test.dataset.names}")
