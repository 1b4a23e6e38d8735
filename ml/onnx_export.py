"""Export a SneakerNet to ONNX (one graph, or two when the footwear branch can be skipped) and open it."""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ml.model import SneakerNet

log = logging.getLogger(__name__)

INPUT, OUTPUTS = "images", ["probs", "embedding", "footwear"]
CLASSIFY_OUTPUTS, SHARED = ["probs", "embedding", "shared"], "shared"
OPSET = 17


@dataclass(frozen=True)
class SplitGraphs:
    """The two ONNX graphs of a model whose footwear score has its own branch."""

    classify: Path  # images -> probs, embedding, shared
    gate: Path  # shared -> footwear


def export_onnx(net: SneakerNet, path: Path, image_size: int) -> Path:
    """The whole model as one graph (images -> probs, embedding, footwear), written atomically."""
    return _export(net.eval(), torch.zeros(2, 3, image_size, image_size), [INPUT], OUTPUTS, path)


def export_split(net: SneakerNet, classify_path: Path, gate_path: Path, image_size: int) -> SplitGraphs:
    """A model with ``has_gate`` as two graphs: the answer, and the footwear branch on its own.

    Why two: the footwear branch costs as much as the classifier's own blocks, and the
    predictor only needs it for photos that do not look like sneakers it knows.
    """
    net = net.eval()
    dummy = torch.zeros(2, 3, image_size, image_size)
    with torch.no_grad():
        shared = net.classify(dummy)[2]
    _export(_Classify(net), dummy, [INPUT], CLASSIFY_OUTPUTS, classify_path)
    _export(_Gate(net), shared, [SHARED], ["footwear"], gate_path)
    return SplitGraphs(classify_path, gate_path)


class _Classify(torch.nn.Module):
    def __init__(self, net: SneakerNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.net.classify(x)


class _Gate(torch.nn.Module):
    def __init__(self, net: SneakerNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, shared: torch.Tensor) -> torch.Tensor:
        return self.net.gate(shared)


def _export(module: torch.nn.Module, dummy: torch.Tensor, inputs: list[str], outputs: list[str],
            path: Path) -> Path:
    """Write ``path`` atomically, with a dynamic batch axis.

    Uses the TorchScript-based exporter (``dynamo=False``): it is quick and needs no
    extra tracing machinery, and these models are plain convolution stacks.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (dummy,), str(tmp), input_names=inputs, output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in [*inputs, *outputs]},
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


def run_classify(session, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probs, embedding, shared) from the first of the split graphs."""
    probs, embedding, shared = session.run(CLASSIFY_OUTPUTS, {INPUT: batch.astype(np.float32, copy=False)})
    return probs, embedding, shared


def run_gate(session, shared: np.ndarray) -> np.ndarray:
    """Footwear scores from the second of the split graphs."""
    return session.run(["footwear"], {SHARED: shared})[0]
