#!/usr/bin/env python3
r"""
ESPNet(v2)'s PReLU in ONNX: the exported ``Relu + slope * Clip`` form against ONNX's own PRelu.

    python bench/bench_prelu.py [--model models/espnetv2_cityscapes.pt] \
        [--sizes 512x256,1024x512] [--iterations 20] [--output bench/results]

For each size the model is exported twice, as ``seg_perception.engines.export_onnx`` exports it
(the project's ``PReLU`` writes ``Relu(x) + a * Clip(x, max=0)``) and with ``nn.PReLU``'s own
forward (ONNX ``PRelu``), and both run in onnxruntime sessions made as the onnxruntime engine
makes them. The logits of both are compared on a random input (they must be equal), then the
forward time of each is taken in turns (one call of each per round), so a busy machine slows
both alike. Results (median, p90, p99 in ms, the speed-up of the medians, device, versions, the
1-minute load average at start and end) are printed and saved as
``<output>/prelu-<device>-<date>.json``.
"""

# First, as in the node: the package sets OpenMP's wait policy before torch loads.
import seg_perception  # noqa: F401, I100

import argparse
import contextlib
from pathlib import Path
import sys
import time
from typing import Dict, Iterator, List

import numpy as np
import torch
from torch import nn

from bench_inference import onnx_cpu_sizes, summarize, write_report  # this folder
from seg_perception.engines import cpu_cores, export_onnx, ONNX_INPUT, ONNX_OUTPUT
from seg_training.nets import calibration, espnetv2
from seg_training.nets.checkpoint import load_model

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / 'models' / 'espnetv2_cityscapes.pt'


@contextlib.contextmanager
def onnx_prelu() -> Iterator[None]:
    """Export the project's PReLU as ONNX PRelu (``nn.PReLU``'s forward) inside the block."""
    own = espnetv2.PReLU.forward
    espnetv2.PReLU.forward = nn.PReLU.forward
    try:
        yield
    finally:
        espnetv2.PReLU.forward = own


def run_size(model: nn.Module, size, iterations: int, threads: int) -> Dict:
    """Export both forms at ``size`` (W, H), check their logits agree and time them in turns."""
    w, h = size
    graphs = {'relu_clip': export_onnx(model, h, w)}
    with onnx_prelu():
        graphs['onnx_prelu'] = export_onnx(model, h, w)
    sessions = {name: calibration.session(g, threads) for name, g in graphs.items()}
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0)).numpy()
    outs = {name: s.run([ONNX_OUTPUT], {ONNX_INPUT: x})[0] for name, s in sessions.items()}
    max_diff = float(np.abs(outs['relu_clip'] - outs['onnx_prelu']).max())
    labels_equal = float((outs['relu_clip'].argmax(1) == outs['onnx_prelu'].argmax(1)).mean())
    times: Dict[str, List[float]] = {name: [] for name in sessions}
    for _ in range(iterations):
        for name, s in sessions.items():
            t0 = time.perf_counter()
            s.run([ONNX_OUTPUT], {ONNX_INPUT: x})
            times[name].append(time.perf_counter() - t0)
    stats = {name: summarize(t) for name, t in times.items()}
    prelu_nodes = sum(1 for m in model.modules() if isinstance(m, nn.PReLU))
    return {
        'network_input': f'{w}x{h}', 'prelu_layers': prelu_nodes,
        'logits_max_abs_diff': max_diff, 'labels_equal': labels_equal,
        'forward': stats,
        'speedup_median': round(stats['onnx_prelu']['median_ms']
                                / stats['relu_clip']['median_ms'], 3),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', default=str(DEFAULT_MODEL), help='an ESPNetv2 or ESPNet model file')
    p.add_argument('--sizes', default='512x256,1024x512',
                   help='network sizes WxH, comma separated')
    p.add_argument('--iterations', type=int, default=20, help='timed calls of each form per size')
    p.add_argument('--output', default=str(Path(__file__).resolve().parent / 'results'))
    p.add_argument('--tag', default='', help='suffix of the result file name')
    args = p.parse_args()
    model, _ = load_model(args.model)
    model.eval()
    if not any(isinstance(m, espnetv2.PReLU) for m in model.modules()):
        p.error(f'--model {args.model}: no PReLU layer (ESPNetv2 and ESPNet have them)')
    threads = cpu_cores()
    env, results = onnx_cpu_sizes(
        args.sizes, lambda size: run_size(model, size, args.iterations, threads))
    write_report({'environment': env, 'model': args.model, 'results': results,
                  'command': ' '.join(sys.argv)}, args.output, 'prelu', args.tag)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
