"""Running an exported model on ONNX Runtime: the session and the graphs' names, without torch.

What the served model needs; exporting (``ml.onnx_export``) needs torch and re-exports these names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

INPUT, OUTPUTS = "images", ["probs", "embedding", "footwear"]
CLASSIFY_OUTPUTS, SHARED, KNOWN_LEVEL = ["probs", "embedding", "shared"], "shared", "known_level"


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


def run_gated(session, batch: np.ndarray, known_level: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probs, embedding, footwear) from ``export_gated``'s graph; footwear NaN where the branch did not run."""
    feeds = {INPUT: batch.astype(np.float32, copy=False), KNOWN_LEVEL: np.array(known_level, dtype=np.float32)}
    probs, embedding, footwear = session.run(OUTPUTS, feeds)
    return probs, embedding, footwear
