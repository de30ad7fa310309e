"""detectron2's DatasetMapper, with an error naming the image when an image cannot be read."""
from detectron2.data import DatasetMapper
from detectron2.data.detection_utils import SizeMismatchError

from ..errors import DatasetError

__all__ = ["CheckedDatasetMapper"]


class CheckedDatasetMapper(DatasetMapper):
    """
    detectron2's `DatasetMapper`, turning an image that cannot be read (missing,
    truncated, not an image, or not the size the json says) into a
    :class:`DatasetError` naming the image id and file.
    """

    def __call__(self, dataset_dict):
        try:
            return super().__call__(dataset_dict)
        except (OSError, SyntaxError, SizeMismatchError) as e:
            # PIL raises OSError for truncated or unknown files, SyntaxError for broken PNGs.
            raise DatasetError(
                f"Image id {dataset_dict.get('image_id')} ({dataset_dict['file_name']}) "
                f"cannot be used: {type(e).__name__}: {e}"
            ) from e
