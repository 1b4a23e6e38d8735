"""Export a SneakerNet to ONNX (one graph; its footwear branch under an ``If`` when it can be skipped).

Opening and running a graph is ``ml.onnx_runtime`` (no torch); its names are re-exported here.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ml.atomic import write_atomically
from ml.model import SneakerNet
from ml.onnx_runtime import (  # noqa: F401 - re-exported: running a graph needs no torch (``ml.onnx_runtime``)
    CLASSIFY_OUTPUTS,
    INPUT,
    KNOWN_LEVEL,
    OUTPUTS,
    SHARED,
    onnx_session,
    run_gated,
    run_session,
)

log = logging.getLogger(__name__)

OPSET = 17


def export_onnx(net: SneakerNet, path: Path, image_size: int) -> Path:
    """The whole model as one graph (images -> probs, embedding, footwear), written atomically."""
    return export_module(net, image_size, OUTPUTS, path)


def export_module(module: torch.nn.Module, image_size: int, outputs: list[str], path: Path) -> Path:
    """Any module of ``images`` (NCHW at ``image_size``) as a graph with these outputs, written atomically."""
    return _export(module.eval(), torch.zeros(2, 3, image_size, image_size), [INPUT], outputs, path)


def export_gated(net: SneakerNet, path: Path, image_size: int, centroids: np.ndarray) -> Path:
    """A model with ``has_gate`` as one graph that runs its footwear branch only when needed.

    Inputs: ``images`` and ``known_level`` (a scalar); outputs as ``export_onnx``. The branch
    runs (an ONNX ``If``) when some photo of the batch is less than ``known_level`` close to a
    class centroid (``centroids``: rows L2-normalised, as the predictor holds them); otherwise
    ``footwear`` is NaN. Why one graph and not two sessions: the branch costs as much as the
    classifier's own blocks, and a second session's thread pool fights the first one's, still
    spinning, for the cores (26 ms instead of 13 at batch 1 on two cores).
    """
    import tempfile

    import onnx

    net = net.eval()
    dummy = torch.zeros(2, 3, image_size, image_size)
    with torch.no_grad():
        shared = net.classify(dummy)[2]
    with tempfile.TemporaryDirectory() as tmp:
        main = onnx.load(str(_export(_Classify(net), dummy, [INPUT], CLASSIFY_OUTPUTS, Path(tmp) / "c.onnx")))
        gate = onnx.load(str(_export(_Gate(net), shared, [SHARED], ["footwear"], Path(tmp) / "g.onnx")))
    model = _gated_model(main, gate, centroids)
    onnx.checker.check_model(model)
    return _write_atomically(path, lambda tmp: onnx.save(model, str(tmp)))


def _gated_model(main, gate, centroids: np.ndarray):
    """``main`` (images -> probs, embedding, shared) with ``gate`` (shared -> footwear) under an If."""
    from onnx import TensorProto, helper, numpy_helper

    graph = main.graph
    # the branch: the gate graph's nodes and weights, names prefixed, reading ``shared`` from the outer graph
    rename = {name: f"gate/{name}" for node in gate.graph.node for name in node.output}
    rename.update({init.name: f"gate/{init.name}" for init in gate.graph.initializer})
    for node in gate.graph.node:
        node.name = f"gate/{node.name}"
        node.input[:] = [rename.get(name, name) for name in node.input]
        node.output[:] = [rename[name] for name in node.output]
    for init in gate.graph.initializer:
        init.name = rename[init.name]
    then_graph = helper.make_graph(list(gate.graph.node), "footwear_branch", [],
                                   [helper.make_tensor_value_info(rename["footwear"], TensorProto.FLOAT, None)],
                                   list(gate.graph.initializer))
    nan = helper.make_tensor("nan", TensorProto.FLOAT, [1], [float("nan")])
    else_graph = helper.make_graph(
        [helper.make_node("Shape", ["familiarity"], ["skip/shape"]),
         helper.make_node("ConstantOfShape", ["skip/shape"], ["skip/footwear"], value=nan)],
        "footwear_skipped", [], [helper.make_tensor_value_info("skip/footwear", TensorProto.FLOAT, None)])
    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(centroids.T, dtype=np.float32),
                                                     "centroids_t"))
    graph.input.append(helper.make_tensor_value_info(KNOWN_LEVEL, TensorProto.FLOAT, []))
    graph.node.extend([
        helper.make_node("MatMul", ["embedding", "centroids_t"], ["similarity"]),
        helper.make_node("ReduceMax", ["similarity"], ["familiarity"], axes=[1], keepdims=0),
        helper.make_node("Less", ["familiarity", KNOWN_LEVEL], ["unknown"]),
        helper.make_node("Cast", ["unknown"], ["unknown_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMax", ["unknown_f"], ["any_unknown"], keepdims=0),
        helper.make_node("Cast", ["any_unknown"], ["run_gate"], to=TensorProto.BOOL),
        helper.make_node("If", ["run_gate"], ["footwear"], then_branch=then_graph, else_branch=else_graph),
    ])
    outputs = [o for o in graph.output if o.name != SHARED]
    del graph.output[:]
    graph.output.extend([*outputs, helper.make_tensor_value_info("footwear", TensorProto.FLOAT, ["batch"])])
    return main


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
    def write(tmp: Path) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, (dummy,), str(tmp), input_names=inputs, output_names=outputs,
                dynamic_axes={name: {0: "batch"} for name in [*inputs, *outputs]},
                opset_version=OPSET, dynamo=False, do_constant_folding=True,
            )

    return _write_atomically(path, write)


def _write_atomically(path: Path, write: Callable[[Path], None]) -> Path:
    """``write`` into a temporary file beside ``path``, then move it into place (no half-written graph).

    ``ml.atomic``: any failure (a full disk) removes the temporary file, and the leftover of an
    export killed midway is removed by the next export of the same graph.
    """
    write_atomically(path, write, clear_stale=True)
    log.info("exported %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return path
