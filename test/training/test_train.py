"""seg-train: config merging, outputs of a run, two-stage schedule, early stopping, errors."""

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from seg_training.base.classes import cityscapes_table
from seg_training.base.yaml_reader import ConfigError
from seg_training.evaluation.seg_eval import evaluate_model_file
from seg_training.nets.checkpoint import load_model, read_file
from seg_training.nets.model import ERFNet, ERFNetConfig
from seg_training.nets.preprocess import IMAGENET_MEAN, IMAGENET_STD
from seg_training.training import engine
from seg_training.training.config import load_config, TrainConfig
from seg_training.training.loop import build_parser, config_from_args, main
from seg_training.training.losses import build_loss
from training_data import write_cityscapes, write_folder

ROOT = Path(__file__).resolve().parents[2]
TINY = ['--size', '64x32', '--batch-size', '4', '--workers', '0']


@pytest.fixture(scope='module')
def cityscapes_root(tmp_path_factory):
    return write_cityscapes(tmp_path_factory.mktemp('cs') / 'cs', n_train=8, n_val=4)


@pytest.fixture(scope='module')
def cityscapes_run(cityscapes_root, tmp_path_factory):
    """One 2-epoch run on the Cityscapes layout, shared by the output checks."""
    out = tmp_path_factory.mktemp('run') / 'out'
    rc = main(['--dataset', 'cityscapes', '--data-root', str(cityscapes_root),
               '--output-dir', str(out), '--epochs', '2', '--seed', '3', *TINY])
    assert rc == 0
    return out


def test_yaml_defaults_match_the_schema():
    with open(ROOT / 'config' / 'train.yaml') as f:
        doc = yaml.safe_load(f)
    defaults = TrainConfig().to_dict()
    assert set(doc) == set(defaults)
    assert set(doc['augment']) == set(defaults['augment'])
    assert load_config() == TrainConfig()


def test_config_file_then_command_line(tmp_path):
    path = tmp_path / 'my.yaml'
    path.write_text('epochs: 7\nlr: 0.001\naugment: {hflip_p: 0.0}\nsize: [128, 64]\n')
    args = build_parser().parse_args(['--config', str(path), '--epochs', '3', '--data-root',
                                      'd', '--output-dir', str(tmp_path / 'o')])
    cfg = config_from_args(args)
    assert (cfg.epochs, cfg.lr, cfg.augment.hflip_p, cfg.size) == (3, 0.001, 0.0, [128, 64])
    assert cfg.weight_decay == TrainConfig().weight_decay  # untouched default
    args = build_parser().parse_args(['--data-root', 'd', '--output-dir', str(tmp_path / 'o'),
                                      '--extra-train-root', 'x', '--extra-train-root', 'y'])
    assert config_from_args(args).extra_train_roots == ['x', 'y']
    path.write_text('epochs: 7\nlearning_rate: 0.1\n')
    with pytest.raises(ConfigError, match=f"{path}: unknown key 'learning_rate'"):
        load_config(path)
    path.write_text('augment: {hflip_p: often}\n')
    with pytest.raises(ConfigError, match=f'{path}: augment.hflip_p must be a number'):
        load_config(path)
    with pytest.raises(ConfigError, match='multiples of 8'):
        load_config(overrides={'size': [100, 50]})
    with pytest.raises(ConfigError, match='exclude each other'):
        load_config(overrides={'freeze_encoder': True, 'encoder_lr_scale': 0.1})


def test_run_writes_every_output(cityscapes_run):
    out = cityscapes_run
    for name in ('best.pt', 'last.pt', 'config.yaml', 'metrics.csv', 'summary.json',
                 'plots/curves.png', 'plots/per_class_iou.png', 'plots/confusion.png',
                 'plots/samples.png'):
        assert (out / name).is_file(), name
    assert list((out / 'tensorboard').glob('events.out.tfevents.*'))
    with open(out / 'metrics.csv') as f:
        rows = list(csv.DictReader(f))
    assert [r['epoch'] for r in rows] == ['1', '2']
    assert all(r['stage'] == 'full' for r in rows)
    with open(out / 'config.yaml') as f:
        saved = yaml.safe_load(f)
    assert (saved['epochs'], saved['seed'], saved['size']) == (2, 3, [64, 32])
    assert saved['mean'] == list(IMAGENET_MEAN) and saved['std'] == list(IMAGENET_STD)

    summary = json.loads((out / 'summary.json').read_text())
    names = cityscapes_table().names
    assert summary['epochs'] == 2 and summary['time_s'] > 0
    assert summary['best_epoch'] in (1, 2)
    assert list(summary['per_class_iou']) == list(names)
    assert summary['best_val_miou'] == max(float(r['val_miou']) for r in rows)
    assert summary['final_val']['miou'] == float(rows[-1]['val_miou'])
    assert summary['config']['epochs'] == 2


def test_best_model_runs_with_its_class_table(cityscapes_run, cityscapes_root):
    out = cityscapes_run
    model, info = load_model(out / 'best.pt')
    assert info.classes == cityscapes_table()
    assert info.input_size == (64, 32)
    assert info.normalization.mean == IMAGENET_MEAN
    summary = json.loads((out / 'summary.json').read_text())
    assert info.metrics['val_miou'] == summary['best_val_miou']
    assert info.metrics['epoch'] == summary['best_epoch']
    assert model(torch.zeros(1, 3, 32, 64)).shape == (1, 19, 32, 64)
    # Evaluating the file on the validation split reproduces the recorded mIoU.
    report = evaluate_model_file(out / 'best.pt', 'cityscapes', cityscapes_root, device='cpu')
    assert report['miou'] == pytest.approx(summary['best_val_miou'], abs=1e-9)


def test_last_checkpoint_holds_the_training_state(cityscapes_run):
    last = read_file(cityscapes_run / 'last.pt')  # weights-only load
    state = last['training_state']
    assert state['progress']['epoch'] == 2
    assert state['optimizer']['state'] and state['scheduler']['last_epoch'] == 2
    assert set(state['rng']) >= {'python', 'numpy', 'torch'}
    assert state['config']['seed'] == 3
    assert state['class_weights'].shape == (19,)


def test_two_stage_schedule_with_an_extra_root(tmp_path):
    root = write_folder(tmp_path / 'f', n_train=4, n_val=2)
    extra = write_folder(tmp_path / 'g', n_train=3, n_val=1, seed=9, mask_format='palette')
    out = tmp_path / 'out'
    assert main(['--dataset', 'folder', '--data-root', str(root), '--output-dir', str(out),
                 '--epochs', '3', '--schedule', 'two-stage', '--encoder-epochs', '1',
                 '--extra-train-root', str(extra), '--no-plots', *TINY]) == 0
    assert not (out / 'plots').exists()
    with open(out / 'metrics.csv') as f:
        stages = [r['stage'] for r in csv.DictReader(f)]
    assert stages == ['encoder', 'full', 'full']
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['best_epoch'] in (2, 3)  # only whole-network epochs compete
    assert (summary['num_train'], summary['num_val']) == (7, 2)
    _, info = load_model(out / 'best.pt')
    assert not info.encoder_only


def test_encoder_stage_trains_the_encoder_at_one_eighth():
    torch.manual_seed(0)
    net = ERFNet(ERFNetConfig(num_classes=3))
    engine.set_trainable(net, 'encoder', freeze_encoder=False)
    decoder = {k: v.clone() for k, v in net.decoder.state_dict().items()}
    head = net.encoder.output_conv.weight.detach().clone()
    opt, _ = engine.build_optimizer(net, TrainConfig(), stage_epochs=1)
    images = torch.randn(2, 3, 32, 64)
    targets = torch.randint(0, 3, (2, 32, 64))
    module = engine.stage_module(net, 'encoder')
    assert module(images).shape == (2, 3, 4, 8)
    losses = engine.train_one_epoch(module, [(images, targets)], build_loss('ce'), opt,
                                    torch.device('cpu'), progress=False)
    assert list(losses) == ['loss'] and losses['loss'] > 0
    assert not torch.equal(head, net.encoder.output_conv.weight)
    for k, v in net.decoder.state_dict().items():
        assert torch.equal(v, decoder[k]), k
    small = engine.resize_target(targets, (4, 8))
    assert torch.equal(small, targets[:, ::8, ::8])


def test_full_stage_freezes_only_what_it_must():
    net = ERFNet(ERFNetConfig(num_classes=3))
    engine.set_trainable(net, 'full', freeze_encoder=False)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert 'encoder.output_conv.weight' not in trainable  # unused by the full forward
    assert 'encoder.initial_block.conv.weight' in trainable
    groups = engine.param_groups(net, 1e-3, encoder_lr_scale=0.1)
    assert [(g['name'], g['lr']) for g in groups] == [('encoder', 1e-4), ('decoder', 1e-3)]
    engine.set_trainable(net, 'full', freeze_encoder=True)
    assert [g['name'] for g in engine.param_groups(net, 1e-3, 1.0)] == ['decoder']


def test_poly_schedule_and_early_stopping():
    assert engine.poly_factor(0, 10) == 1.0
    assert engine.poly_factor(5, 10, 0.9) == pytest.approx(0.5 ** 0.9)
    assert engine.poly_factor(10, 10) == 0.0
    p = engine.Progress()
    assert not p.record(1, 'encoder', 0.9, patience=2)  # encoder epochs never count
    assert p.record(2, 'full', 0.3, patience=2)
    assert not p.record(3, 'full', 0.3, patience=2)  # equal is no improvement
    assert not p.stopped_early
    assert p.record(4, 'full', 0.4, patience=2) and p.bad_epochs == 0
    assert not p.record(5, 'full', float('nan'), patience=2)
    assert not p.record(6, 'full', 0.2, patience=2)
    assert p.stopped_early and (p.best_epoch, p.best_miou) == (4, 0.4)


def test_bad_input_gives_an_error_naming_it(tmp_path, capsys):
    missing = tmp_path / 'nowhere'
    assert main(['--dataset', 'folder', '--data-root', str(missing), '--output-dir',
                 str(tmp_path / 'o'), *TINY]) == 2
    assert str(missing / 'classes.yaml') in capsys.readouterr().err
    assert main(['--dataset', 'folder', '--output-dir', str(tmp_path / 'o')]) == 2
    assert '--data-root' in capsys.readouterr().err


def test_refuses_to_overwrite_a_run(cityscapes_run, cityscapes_root, capsys):
    assert main(['--dataset', 'cityscapes', '--data-root', str(cityscapes_root),
                 '--output-dir', str(cityscapes_run), *TINY]) == 2
    assert '--resume' in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('dtype', ['bf16', 'fp16'])
def test_amp_channels_last_on_cuda(tmp_path, dtype):
    root = write_folder(tmp_path / 'f', n_train=4, n_val=2)
    out = tmp_path / 'out'
    assert main(['--dataset', 'folder', '--data-root', str(root), '--output-dir', str(out),
                 '--epochs', '1', '--device', 'cuda', '--amp', '--amp-dtype', dtype,
                 '--no-plots', *TINY]) == 0
    _, info = load_model(out / 'best.pt')
    assert info.classes.num_classes == 8


def test_resume_config_comes_from_the_run(cityscapes_run, tmp_path):
    def parse(*argv):
        return config_from_args(build_parser().parse_args(
            ['--output-dir', str(cityscapes_run), '--resume', *argv]))

    cfg = parse('--epochs', '5')
    assert (cfg.epochs, cfg.seed, cfg.size) == (5, 3, [64, 32])
    assert cfg.mean == list(IMAGENET_MEAN)  # the resolved normalisation is kept
    same = tmp_path / 'same.yaml'
    same.write_text('augment: {hflip_p: 0.5}\nseed: 3\n')
    assert parse('--config', str(same)) == parse()
    with pytest.raises(ConfigError, match='lr, seed differ from the interrupted run'):
        parse('--lr', '0.1', '--seed', '4')
    with pytest.raises(ConfigError, match='nothing to resume'):
        config_from_args(build_parser().parse_args(['--output-dir', str(tmp_path), '--resume']))
