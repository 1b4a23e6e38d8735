"""Export a SneakerNet to ONNX (one graph: probs, embedding, footwear) and open it with ONNX Runtime."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from ml.model import SneakerNet

log = logging.getLogger(__name__)

INPUT, OUTPUTS = "images", ["probs", "embedding", "footwear"]
OPSET = 17


def export_onnx(net: SneakerNet, path: Path, image_size: int) -> Path:
    """Write ``path`` atomically, with a dynamic batch axis.

    Uses the TorchScript-based exporter (``dynamo=False``): it is quick and needs no
    extra tracing machinery, and these models are plain convolution stacks.
    """
    net = net.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    dummy = torch.zeros(2, 3, image_size, image_size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net, (dummy,), str(tmp), input_names=[INPUT], output_names=OUTPUTS,
            dynamic_axes={INPUT: {0: "batch"}, **{name: {0: "batch"} for name in OUTPUTS}},
            opset_version=OPSET, dynamo=False, do_constant_folding=True,
        )
    tmp.replace(path)
    log.info("exported %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return path


def onnx_session(path: Path, threads: int | None = None):
    """An ONNX Runtime CPU session with a fixed thread count (the machine is shared)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_session(session, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probs, embedding, footwear) for a float32 NCHW batch."""
    probs, embedding, footwear = session.run(OUTPUTS, {INPUT: batch.astype(np.float32, copy=False)})
    return probs, embedding, footwear
