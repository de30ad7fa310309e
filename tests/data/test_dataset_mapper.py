"""CheckedDatasetMapper: an image that cannot be used gets an error naming its id and file."""
import copy
import re
import shutil

import pytest

from detectron2.data import DatasetCatalog

from projects.cascade.data import CheckedDatasetMapper
from projects.cascade.errors import DatasetError
from tests.helpers import tiny_cfg


@pytest.fixture
def tile(tmp_path, trees_prepared):
    """The dataset dict of a real tree tile, its image copied to `tmp_path` to be damaged."""
    d = copy.deepcopy(DatasetCatalog.get("trees_val")[0])
    d["file_name"] = shutil.copy(d["file_name"], tmp_path)
    return d


@pytest.mark.parametrize(
    "damage, error",
    [
        (lambda b: b[: len(b) // 2], r"(OSError|SyntaxError)"),  # truncated
        (lambda b: b"\x89PNG\r\n" + b"\0" * 100, "UnidentifiedImageError"),  # corrupt
        (lambda b: b"these bytes are no image", "UnidentifiedImageError"),
    ],
    ids=["truncated", "corrupt", "not-an-image"],
)
def test_unreadable_image_names_it(tile, damage, error):
    with open(tile["file_name"], "rb") as f:
        content = f.read()
    with open(tile["file_name"], "wb") as f:
        f.write(damage(content))
    mapper = CheckedDatasetMapper(tiny_cfg(num_classes=1), is_train=True)
    where = rf"Image id {tile['image_id']} \({re.escape(tile['file_name'])}\)"
    with pytest.raises(DatasetError, match=rf"{where} cannot be used: {error}"):
        mapper(tile)


def test_image_of_another_size_than_the_json_says(tile):
    tile["width"] = 500
    message = rf"Image id {tile['image_id']} .* cannot be used: .*Mismatched image shape"
    with pytest.raises(DatasetError, match=message):
        CheckedDatasetMapper(tiny_cfg(num_classes=1), is_train=False)(tile)
