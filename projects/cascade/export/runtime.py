"""Load a file written by `export_model` as a deployment would, and run it."""

import json
from typing import Dict, Optional

import numpy as np
import onnxruntime
import torch

from .exporter import INPUT_NAME, METADATA_KEY

__all__ = ["ExportedModel"]


class ExportedModel:
    """
    A file written by `export_model`, loaded the way a deployment would load it:
    TorchScript with torch.jit.load, ONNX with onnxruntime. Calling it on a model input
    returns the outputs by name, as numpy arrays.
    """

    def __init__(self, path: str, num_threads: Optional[int] = None):
        """
        Args:
            num_threads: onnxruntime's intra-op threads (default: its own choice). TorchScript
                uses torch's process-wide setting, torch.set_num_threads.
        """
        self.path = path
        if path.endswith(".ts"):
            self.format = "torchscript"
            files = {METADATA_KEY: ""}
            module = torch.jit.load(path, _extra_files=files)
            self.metadata = json.loads(files[METADATA_KEY])
            self._run = lambda image: [x.numpy() for x in module(torch.as_tensor(image))]
        elif path.endswith(".onnx"):
            self.format = "onnx"
            options = onnxruntime.SessionOptions()
            if num_threads:
                options.intra_op_num_threads = num_threads
            session = onnxruntime.InferenceSession(
                path, options, providers=["CPUExecutionProvider"]
            )
            self.metadata = json.loads(session.get_modelmeta().custom_metadata_map[METADATA_KEY])
            self._run = lambda image: session.run(None, {INPUT_NAME: np.asarray(image)})
        else:
            raise ValueError(f"{path}: expected a .ts (TorchScript) or .onnx file.")

    def __call__(self, image) -> Dict[str, np.ndarray]:
        with torch.no_grad():
            return dict(zip(self.metadata["outputs"], self._run(image)))
