"""detectron2's COCO data (common/data/coco.py), evaluated with AP60-AP90 too."""

from detectron2 import model_zoo
from detectron2.config import LazyCall as L

from projects.cascade.evaluation import COCOEvaluatorAtIoUs

dataloader = model_zoo.get_config("common/data/coco.py").dataloader
dataloader.train.mapper.use_instance_mask = False
dataloader.evaluator = L(COCOEvaluatorAtIoUs)(dataset_name="${..test.dataset.names}")
