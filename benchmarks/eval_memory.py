#!/usr/bin/env python
"""
Evaluate on a dataset of many images and record the process's memory as it goes.

It cuts random crops of the real tree tiles (all three splits) into a COCO dataset,
registers it through the project's checked loader, runs detectron2's
`inference_on_dataset` with `COCOEvaluator`, and samples the resident set size (RSS)
every few images. During inference only the evaluator's list of detections should
grow; the report sets the RSS growth against their size.

    python benchmarks/eval_memory.py --output /tmp/tree_crops --num-images 600

Extra `KEY VALUE` arguments override the config (e.g. `MODEL.WEIGHTS model_final.pth`).
Linux only: it reads /proc/self/status.
"""

import argparse
import json
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import (
    COCOEvaluator,
    DatasetEvaluator,
    DatasetEvaluators,
    inference_on_dataset,
)

from projects.cascade.config_loader import load_config
from projects.cascade.data import register_coco_instances
from projects.cascade.data.datasets import dataset_folder
from projects.cascade.data.tiles import clip_boxes_to_tile
from projects.cascade.demo import register_demo
from projects.cascade.engine.predictor import build_trained_model
from projects.cascade.engine.trainer import ReliableTrainer

REPO = Path(__file__).resolve().parents[1]


def make_crops(out_dir, num_images, size, seed=0):
    """Random `size` x `size` crops of the tree tiles, boxes clipped as prepare_trees.py does."""
    trees = dataset_folder("trees")
    tiles = []
    for split in ("train", "val", "test"):
        data = json.loads((trees / f"trees_{split}.json").read_text())
        boxes = defaultdict(list)
        for a in data["annotations"]:
            x, y, w, h = a["bbox"]
            boxes[a["image_id"]].append((x, y, x + w, y + h))
        tiles += [(trees / "images" / img["file_name"], boxes[img["id"]]) for img in data["images"]]

    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        path, tile_boxes = rng.choice(tiles)
        with Image.open(path) as tile:
            x0, y0 = rng.randrange(tile.width - size + 1), rng.randrange(tile.height - size + 1)
            file_name = f"crop_{image_id:05d}.png"
            tile.crop((x0, y0, x0 + size, y0 + size)).save(out_dir / "images" / file_name)
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        for bx0, by0, bx1, by1 in clip_boxes_to_tile(tile_boxes, x0, y0, size, size, 0.5):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "bbox": [bx0, by0, bx1 - bx0, by1 - by0],
                    "area": (bx1 - bx0) * (by1 - by0),
                    "iscrowd": 0,
                }
            )
    json_file = out_dir / "tree_crops.json"
    json_file.write_text(
        json.dumps(
            {
                "images": images,
                "annotations": annotations,
                "categories": [{"id": 1, "name": "tree"}],
            }
        )
    )
    return json_file, len(annotations)


def rss_mb(field="VmRSS"):
    """This process's resident set size (VmRSS) or its peak (VmHWM), in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _deep_size(obj):
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(_deep_size(k) + _deep_size(v) for k, v in obj.items())
    elif isinstance(obj, (list, tuple)):
        size += sum(_deep_size(v) for v in obj)
    return size


def deep_size_mb(obj):
    """Memory held by nested dicts, lists and scalars (the evaluator's stored detections)."""
    return _deep_size(obj) / 2**20


class MemoryProbe(DatasetEvaluator):
    """Every `every` images: images seen, RSS, and the detections `coco` has stored."""

    def __init__(self, coco, every):
        self._coco = coco
        self._every = every

    def reset(self):
        self.samples, self._seen = [], 0

    def process(self, inputs, outputs):
        self._seen += len(inputs)
        if self._seen == 1 or self._seen % self._every == 0:
            stored = self._coco._predictions
            self.samples.append(
                {
                    "images": self._seen,
                    "rss_mb": round(rss_mb(), 1),
                    "detections": sum(len(p.get("instances", [])) for p in stored),
                    "detections_mb": round(deep_size_mb(stored), 1),
                }
            )

    def evaluate(self):
        return None


def measure(args):
    out = Path(args.output)
    register_demo()
    json_file, num_boxes = make_crops(out, args.num_images, args.crop_size)
    if "tree_crops" in DatasetCatalog.list():  # a second measurement in one process
        DatasetCatalog.remove("tree_crops")
        MetadataCatalog.remove("tree_crops")
    register_coco_instances("tree_crops", {}, str(json_file), str(out / "images"))
    size = str(args.crop_size)
    cfg = load_config(
        args.config_file,
        [
            "DATASETS.TEST",
            "('tree_crops',)",
            "INPUT.MIN_SIZE_TEST",
            size,
            "INPUT.MAX_SIZE_TEST",
            size,
            "OUTPUT_DIR",
            str(out),
            *args.opts,
        ],
    )
    torch.manual_seed(0)
    model = build_trained_model(cfg)
    loader = ReliableTrainer.build_test_loader(cfg, "tree_crops")
    coco = COCOEvaluator("tree_crops", output_dir=None)
    probe = MemoryProbe(coco, args.every)

    start, t0 = rss_mb(), time.time()
    results = inference_on_dataset(model, loader, DatasetEvaluators([coco, probe]))
    first, last = probe.samples[0], probe.samples[-1]
    report = {
        "images": last["images"],
        "boxes": num_boxes,
        "seconds": round(time.time() - t0),
        "rss_start_mb": round(start, 1),
        "rss_after_first_image_mb": first["rss_mb"],
        "rss_end_of_inference_mb": last["rss_mb"],
        "rss_after_coco_eval_mb": round(rss_mb(), 1),
        "peak_rss_mb": round(rss_mb("VmHWM"), 1),
        "stored_detections": last["detections"],
        "stored_detections_mb": last["detections_mb"],
        "growth_beyond_detections_mb": round(
            last["rss_mb"] - first["rss_mb"] - (last["detections_mb"] - first["detections_mb"]), 1
        ),
        "bbox_AP": round(results["bbox"]["AP"], 2),
        "samples": probe.samples,
    }
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="folder for the crops and the results")
    parser.add_argument(
        "--config-file", default=str(REPO / "configs/trees/cascade_rcnn_trees.yaml")
    )
    parser.add_argument("--num-images", type=int, default=600)
    parser.add_argument("--crop-size", type=int, default=200)
    parser.add_argument("--every", type=int, default=50, help="sample RSS every N images")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE")
    args = parser.parse_args(argv)
    report = measure(args)
    (Path(args.output) / "memory.json").write_text(json.dumps(report, indent=1))
    print("| images | RSS (MiB) | stored detections | their size (MiB) |")
    print("|---|---|---|---|")
    for s in report["samples"]:
        print(f"| {s['images']} | {s['rss_mb']} | {s['detections']} | {s['detections_mb']} |")
    print(json.dumps({k: v for k, v in report.items() if k != "samples"}, indent=1))


if __name__ == "__main__":
    main()
