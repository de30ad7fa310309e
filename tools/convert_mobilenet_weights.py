#!/usr/bin/env python
"""
Convert torchvision's ImageNet MobileNetV2 weights (mobilenet_v2-b0353104.pth) into the
detectron2 checkpoint that the demo configs load as MODEL.WEIGHTS
(cascade://ImageNetPretrained/mobilenet_v2.pth), as detectron2's
tools/convert-torchvision-to-d2.py does for ResNets. scripts/setup.sh runs it once:

    python tools/convert_mobilenet_weights.py mobilenet_v2-b0353104.pth

The input must be torchvision's file: its sha256 starts with b0353104, as torchvision checks.
"""

import argparse
import hashlib
import sys
from functools import partial
from pathlib import Path

import torch

from projects.cascade.engine.checkpoint import read_checkpoint
from projects.cascade.modeling.backbone import IMAGENET_WEIGHTS, convert_torchvision_weights
from projects.cascade.utils import CacheHandler, atomic_write, cache_path

SHA256_PREFIX = "b0353104"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("torchvision_file", help="torchvision's mobilenet_v2-b0353104.pth")
    default = cache_path(IMAGENET_WEIGHTS[len(CacheHandler.PREFIX) :])
    parser.add_argument("--output", default=str(default), help=f"default: {default}")
    args = parser.parse_args(argv)

    digest = hashlib.sha256(Path(args.torchvision_file).read_bytes()).hexdigest()
    if not digest.startswith(SHA256_PREFIX):
        sys.exit(
            f"error: {args.torchvision_file} has sha256 {digest}, which does not start with "
            f"{SHA256_PREFIX}: it is not torchvision's file. Not converting."
        )
    converted = convert_torchvision_weights(read_checkpoint(args.torchvision_file))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(output, partial(torch.save, {"model": converted}))
    print(f"wrote {len(converted)} tensors of {args.torchvision_file} to {output}")


if __name__ == "__main__":
    main()
