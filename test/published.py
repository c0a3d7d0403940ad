"""State dicts laid out as the networks' authors publish them, made by the tests."""

from typing import Dict

import torch


def published_state_dict(net: torch.nn.Module, prefix: str = '',
                         batch_counts: bool = True) -> Dict[str, torch.Tensor]:
    """
    Return ``net``'s state_dict with non-trivial BN statistics, keys under ``prefix``.

    ``batch_counts=False`` leaves out ``num_batches_tracked``, as files of PyTorch < 0.4 do.
    """
    sd = net.state_dict()
    for k, v in sd.items():
        if k.endswith('running_var'):
            v.uniform_(0.5, 2.0)
        elif k.endswith('running_mean'):
            v.normal_(0, 0.1)
    return {prefix + k: v.clone() for k, v in sd.items()
            if batch_counts or not k.endswith('num_batches_tracked')}
