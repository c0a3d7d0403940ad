#!/usr/bin/env python3
r"""
Where a model's onnxruntime CPU time goes, by kind of operation: what int8 can and cannot speed up.

    python bench/profile_onnx.py [--model models/espnetv2_cityscapes.pt] [--sizes 1024x512] \
        [--runs 6] [--output bench/results]

The model is exported as the onnxruntime engine exports it (``seg_perception.engines``) and run
in a session made as the engine makes it, with onnxruntime's profiler on. The kernel times of
all runs but the first are summed by kind: dense convolutions (group 1), grouped and depthwise
convolutions, elementwise operations (activations, batch norm, adds), layout changes and copies
(onnxruntime's NCHWc reorders, concatenations, slices, pads, gathers, cumulative sums), resizes
and pooling. Only convolutions run in int8 under ``onnxruntime_int8``; the share of the rest
bounds what int8 can give (Amdahl). Results are printed and saved as
``<output>/profile_onnx-<device>-<date>.json``.
"""

# First, as in the node: the package sets OpenMP's wait policy before torch loads.
import seg_perception  # noqa: F401, I100

import argparse
import collections
import json
from pathlib import Path
import sys
import tempfile
from typing import Dict

import numpy as np
import torch

from bench_inference import onnx_cpu_sizes, write_report  # this folder
from seg_perception.engines import cpu_cores, export_onnx, ONNX_INPUT
from seg_training.nets import calibration
from seg_training.nets.checkpoint import load_model

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / 'models' / 'espnetv2_cityscapes.pt'
CONVS = ('Conv', 'FusedConv', 'NchwcConv')
ELEMENTWISE = ('PRelu', 'Relu', 'Clip', 'Add', 'Mul', 'Sub', 'Div', 'Sigmoid',
               'BatchNormalization', 'LeakyRelu')
LAYOUT = ('ReorderInput', 'ReorderOutput', 'Transpose', 'Reshape', 'Concat', 'Slice', 'Gather',
          'Pad', 'CumSum', 'Split', 'Identity')
POOLING = ('AveragePool', 'GlobalAveragePool', 'MaxPool')


def conv_groups(data: bytes) -> Dict[str, int]:
    """
    Return {name: group count} of the graph's convolutions.

    Names are each convolution's node and output tensor, and the outputs of the elementwise
    nodes that follow it: onnxruntime fuses those into the convolution and names the fused
    kernel after the last of them.
    """
    import onnx

    groups: Dict[str, int] = {}
    for node in onnx.load_from_string(data).graph.node:
        if node.op_type in ('Conv', 'ConvTranspose'):
            g = next((a.i for a in node.attribute if a.name == 'group'), 1)
            groups[node.name] = groups[node.output[0]] = g
        elif node.op_type in ELEMENTWISE:
            fed = [groups[i] for i in node.input if i in groups]
            if fed:
                groups[node.output[0]] = fed[0]
    return groups


def kind_of(op: str, node: str, groups: Dict[str, int]) -> str:
    """Name the kind of a profiled kernel from its op type and node name."""
    if op in CONVS or op == 'ConvTranspose':
        # Fused kernels are named after a node or tensor of the graph plus suffixes such as
        # '_nchwc' (onnxruntime's blocked layout) and '_bn' (a batch norm folded in).
        name = node
        while name not in groups and name.endswith(('_nchwc', '_bn')):
            name = name.rsplit('_', 1)[0]
        g = groups.get(name)
        if g is None:
            return 'convolution, group unknown'
        return 'convolution, dense' if g == 1 else 'convolution, grouped or depthwise'
    if op in ELEMENTWISE:
        return 'elementwise (activations, batch norm, adds)'
    if op in LAYOUT:
        return 'layout and copies (reorders, concat, slice, pad, gather, cumsum)'
    if op in POOLING:
        return 'pooling'
    if op == 'Resize':
        return 'resize'
    return f'other ({op})'


def profile(model: torch.nn.Module, size, runs: int, threads: int) -> Dict:
    """Run the exported model ``runs`` times with the profiler on; return shares by kind."""
    w, h = size
    data = export_onnx(model, h, w)
    groups = conv_groups(data)
    with tempfile.TemporaryDirectory(prefix='profile_onnx.') as tmp:
        session = calibration.session(data, threads, profile_prefix=str(Path(tmp) / 'run'))
        x = np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32)
        for _ in range(runs):
            session.run(None, {ONNX_INPUT: x})
        events = json.loads(Path(session.end_profiling()).read_text())
    per_run = [e for e in events if e.get('cat') == 'Session' and e.get('name') == 'model_run']
    first_end = per_run[0]['ts'] + per_run[0]['dur'] if per_run else 0
    totals: Dict[str, float] = collections.Counter()
    for e in events:
        if e.get('cat') != 'Node' or not e['name'].endswith('_kernel_time') or e['ts'] < first_end:
            continue  # the first run (allocations, first touches) is left out
        node = e['name'][:-len('_kernel_time')]
        totals[kind_of(e.get('args', {}).get('op_name', '?'), node, groups)] += e['dur']
    total = sum(totals.values()) or 1.0
    timed = [r['dur'] / 1000.0 for r in per_run[1:]]
    return {
        'network_input': f'{w}x{h}', 'runs_counted': len(timed),
        'run_median_ms_profiled': round(float(np.median(timed)), 2) if timed else None,
        'share': {k: round(v / total, 4)
                  for k, v in sorted(totals.items(), key=lambda kv: -kv[1])},
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--model', default=str(DEFAULT_MODEL), help='model file')
    p.add_argument('--sizes', default='1024x512', help='network sizes WxH, comma separated')
    p.add_argument('--runs', type=int, default=6,
                   help='profiled runs per size (the first is not counted)')
    p.add_argument('--output', default=str(Path(__file__).resolve().parent / 'results'))
    p.add_argument('--tag', default='', help='suffix of the result file name')
    args = p.parse_args()
    if args.runs < 2:
        p.error('--runs must be at least 2 (the first run is not counted)')
    model, _ = load_model(args.model)
    model.eval()
    threads = cpu_cores()
    env, results = onnx_cpu_sizes(args.sizes,
                                  lambda size: profile(model, size, args.runs, threads))
    write_report({'environment': env, 'model': args.model, 'results': results,
                  'command': ' '.join(sys.argv)}, args.output, 'profile_onnx', args.tag)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
