"""seg-train's help, optimiser and loss choices, timing, finished runs and upscaling warning."""

import json
import logging

import pytest
import torch

from seg_training.nets.model import ERFNet, ERFNetConfig
from seg_training.training import engine
from seg_training.training.config import TrainConfig
from seg_training.training.loop import build_parser, main
from seg_training.training.losses import build_loss, DiceLoss
from training_data import write_folder

TINY = ['--size', '64x32', '--batch-size', '4', '--workers', '0', '--no-plots']


def test_every_option_has_help_and_its_default():
    parser = build_parser()
    text = parser.format_help()
    for action in parser._actions:
        if action.dest == 'help':
            continue
        assert action.help, f'{action.option_strings} has no help'
        default = getattr(TrainConfig(), action.dest, None)
        if isinstance(default, (int, float, str)) and not isinstance(default, bool) \
                and action.nargs != 0:
            assert f'(default: {default})' in ' '.join(action.help.split()), action.dest
    assert '(required' in text and 'default: 512x256' in text


@pytest.mark.parametrize('name,cls', [('adam', torch.optim.Adam), ('adamw', torch.optim.AdamW),
                                      ('sgd', torch.optim.SGD)])
def test_optimizer_choice(name, cls):
    net = ERFNet(ERFNetConfig(num_classes=3))
    cfg = TrainConfig(optimizer=name, lr=0.01, weight_decay=0.001, momentum=0.8)
    opt, _ = engine.build_optimizer(net, cfg, 10)
    assert type(opt) is cls
    group = opt.param_groups[0]
    assert group['lr'] == 0.01 and group['weight_decay'] == 0.001
    if name == 'sgd':
        assert group['momentum'] == 0.8 and group['nesterov']


def test_ce_dice_is_the_weighted_sum():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 8, 8)
    target = torch.randint(0, 4, (2, 8, 8))
    target[0, 0] = 255
    ce = torch.nn.CrossEntropyLoss(ignore_index=255)(logits, target)
    dice = DiceLoss()(logits, target)
    got = build_loss('ce_dice', dice_weight=0.5)(logits, target)
    assert torch.allclose(got, ce + 0.5 * dice)
    assert not torch.allclose(got, ce)


def test_times_finished_resume_and_upscaling_warning(tmp_path, capsys, caplog):
    root = write_folder(tmp_path / 'data', n_train=4, n_val=2, size=(64, 32))
    out = tmp_path / 'run'
    with caplog.at_level(logging.WARNING, logger='seg_training.training.loop'):
        assert main(['--dataset', 'folder', '--data-root', str(root), '--output-dir', str(out),
                     '--epochs', '1', '--optimizer', 'adamw', '--loss', 'ce_dice',
                     *TINY[:1], '128x64', *TINY[2:]]) == 0
    assert 'training size 128x64 is larger than the images' in caplog.text
    assert '4.0x the pixels of --size 64x32' in caplog.text
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['time_s'] >= summary['epoch_time_s'] > 0
    assert summary['config']['optimizer'] == 'adamw' and summary['config']['loss'] == 'ce_dice'
    capsys.readouterr()
    assert main(['--output-dir', str(out), '--resume']) == 0
    said = capsys.readouterr().out
    assert 'finished after 1 of 1 epochs' in said and 'nothing to resume' in said
