"""What a network costs in arithmetic, and the least time this machine needs for it.

Why: a latency target is only worth chasing when the hardware can meet it. Counting the
multiply-adds of a forward pass and timing the machine's best dense matrix multiply (the
fastest arithmetic any runtime gets out of these cores) gives a floor no runtime, graph
optimisation or thread setting can beat; ``bench.speed`` prints it next to the measured times.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn


def multiply_adds(module: nn.Module, run: Callable[[], object]) -> int:
    """Multiply-adds of the convolutions and linear layers of ``module`` that ``run()`` calls.

    Other layers (activations, pooling, BatchNorm folded into the convolutions at export) add
    a few percent at most and are left out, so the figure is a lower bound.
    """
    total = 0

    def count(layer: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(layer, nn.Conv2d):
            per_output = (layer.in_channels // layer.groups) * layer.kernel_size[0] * layer.kernel_size[1]
            total += output.numel() * per_output
        elif isinstance(layer, nn.Linear):
            total += output.numel() * layer.in_features

    hooks = [m.register_forward_hook(count) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            run()
    finally:
        for hook in hooks:
            hook.remove()
    return total


def dense_gflops(threads: int, size: int = 2048, repeats: int = 8) -> float:
    """This machine's best float32 matrix-multiply rate in GFLOP/s, on ``threads`` threads.

    Counts 2 flops per multiply-add.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(size, size), torch.randn(size, size)
        a @ b
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    return 2 * size**3 / best / 1e9


def floor_ms(macs: int, gflops: float) -> float:
    """The least time ``macs`` multiply-adds take at ``gflops``: the network at the machine's peak."""
    return 2 * macs / (gflops * 1e9) * 1000
