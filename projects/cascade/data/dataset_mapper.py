"""
detectron2's DatasetMapper, with an error naming the image when an image cannot be read,
and optionally the crowd regions that the ROI heads then ignore (IGNORE_IOF_THRESH).
"""

from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data.detection_utils import SizeMismatchError

from ..errors import DatasetError
from .ignore_regions import IgnoreRegions, crowd_regions

__all__ = ["CheckedDatasetMapper"]


class CheckedDatasetMapper(DatasetMapper):
    """
    detectron2's `DatasetMapper`, turning an image that cannot be read (missing,
    truncated, not an image, or not the size the json says) into a
    :class:`DatasetError` naming the image id and file.

    With `keep_crowd_regions`, the `iscrowd` annotations that detectron2 drops become the
    `ignore_regions` field of the image's instances (see ignore_regions.py).
    """

    @configurable
    def __init__(self, is_train: bool, *, keep_crowd_regions: bool = False, **kwargs):
        super().__init__(is_train, **kwargs)
        self.keep_crowd_regions = keep_crowd_regions

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        ret = super().from_config(cfg, is_train)
        cascade = cfg.MODEL.get("ROI_BOX_CASCADE_HEAD", {})
        ret["keep_crowd_regions"] = is_train and cascade.get("IGNORE_IOF_THRESH", -1.0) >= 0
        return ret

    def __call__(self, dataset_dict):
        try:
            return super().__call__(dataset_dict)
        except (OSError, SyntaxError, SizeMismatchError) as e:
            # PIL raises OSError for truncated or unknown files, SyntaxError for broken PNGs.
            raise DatasetError(
                f"Image id {dataset_dict.get('image_id')} ({dataset_dict['file_name']}) "
                f"cannot be used: {type(e).__name__}: {e}"
            ) from e

    def _transform_annotations(self, dataset_dict, transforms, image_shape):
        if not self.keep_crowd_regions:
            return super()._transform_annotations(dataset_dict, transforms, image_shape)
        regions = crowd_regions(dataset_dict["annotations"], transforms, image_shape)
        super()._transform_annotations(dataset_dict, transforms, image_shape)
        instances = dataset_dict["instances"]
        instances.ignore_regions = IgnoreRegions(regions, len(instances))
