"""Transfer learning: head rows by class name, official files, frozen encoder, conversion."""

import json

import pytest
import torch

from seg_training.base.classes import ClassTable, cityscapes_table, CUSTOM8
from seg_training.nets.checkpoint import (build_model, IMAGENET_ENCODER_PREFIX, load_model,
                                          ModelFileError, ModelInfo, Normalization, read_file,
                                          save_model)
from seg_training.nets.model import ERFNet, ERFNetConfig
from seg_training.training.loop import main
from seg_training.training.transfer import HEAD_KEYS, init_from_file, match_classes
from training_data import write_folder

TINY = ['--size', '64x32', '--batch-size', '4', '--workers', '0', '--no-plots']


@pytest.fixture(scope='module')
def cityscapes_model(tmp_path_factory):
    """Write a project model file with the 19 Cityscapes classes and random weights."""
    torch.manual_seed(1)
    info = ModelInfo(classes=cityscapes_table(), input_size=(64, 32),
                     normalization=Normalization((0.3, 0.3, 0.3), (0.2, 0.2, 0.2)))
    model = build_model(info)
    path = tmp_path_factory.mktemp('src') / 'city.pt'
    save_model(model, info, path)
    return path


@pytest.fixture(scope='module')
def folder_root(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp('f') / 'f', n_train=4, n_val=2)


def _row(sd, key, index):
    return sd[key].select(HEAD_KEYS[key], index)


def test_match_classes_by_name_and_alias():
    rows = match_classes(CUSTOM8, cityscapes_table())
    city = cityscapes_table().names
    assert {CUSTOM8.names[t]: city[s] for t, s in rows.items()} == {
        'road': 'road', 'sidewalk': 'sidewalk', 'building': 'building', 'pole': 'pole',
        'vegetation': 'vegetation', 'sky': 'sky', 'person': 'person', 'vehicle': 'car'}
    void = cityscapes_table(with_void=True)
    target = ClassTable(('Road', 'void'), ((0, 0, 0), (1, 1, 1)))
    assert match_classes(target, void) == {0: 0}  # case-insensitive; void is never a source


def test_new_head_rows_come_from_matching_classes(cityscapes_model):
    src = read_file(cityscapes_model)['state_dict']
    city = cityscapes_table().names
    target = ClassTable(CUSTOM8.names + ('curb',), CUSTOM8.colors + ((9, 9, 9),))
    torch.manual_seed(5)
    net = ERFNet(ERFNetConfig(num_classes=target.num_classes))
    fresh = {k: v.clone() for k, v in net.state_dict().items()}
    report = init_from_file(net, cityscapes_model, target)
    sd = net.state_dict()
    assert report.head == 'matched' and report.rows['vehicle'] == 'car'
    assert report.rows['curb'] is None
    assert report.normalization.mean == (0.3, 0.3, 0.3)
    for key in HEAD_KEYS:
        for t, name in enumerate(target.names):
            if name == 'curb':
                assert torch.equal(_row(sd, key, t), _row(fresh, key, t)), key
            else:
                source = city.index('car' if name == 'vehicle' else name)
                assert torch.equal(_row(sd, key, t), _row(src, key, source)), (key, name)
    for k, v in sd.items():
        if k not in HEAD_KEYS:
            assert torch.equal(v, src[k]), k


def test_same_classes_copy_the_heads(cityscapes_model):
    net = ERFNet(ERFNetConfig(num_classes=19))
    report = init_from_file(net, cityscapes_model, cityscapes_table())
    src = read_file(cityscapes_model)['state_dict']
    assert report.head == 'copied'
    for k, v in net.state_dict().items():
        assert torch.equal(v, src[k]), k


def test_official_state_dict_initialises_by_name(tmp_path):
    torch.manual_seed(2)
    official = ERFNet(ERFNetConfig(num_classes=20))
    path = tmp_path / 'erfnet_pretrained.pth'
    torch.save({f'module.{k}': v for k, v in official.state_dict().items()}, path)
    net = ERFNet(ERFNetConfig(num_classes=8))
    report = init_from_file(net, path, CUSTOM8)
    assert report.source_format == 'erfnet_pretrained'
    assert report.normalization == Normalization()  # [0, 1] inputs, no mean/std
    city = cityscapes_table().names
    w = net.decoder.output_conv.weight  # (16, K, 2, 2)
    assert torch.equal(w[:, CUSTOM8.index('vehicle')],
                       official.decoder.output_conv.weight[:, city.index('car')])
    assert torch.equal(net.encoder.layers[3].conv3x1_1.weight,
                       official.encoder.layers[3].conv3x1_1.weight)


def test_imagenet_encoder_is_not_an_init_file(tmp_path):
    enc = ERFNet(ERFNetConfig(num_classes=8)).encoder.state_dict()
    path = tmp_path / 'erfnet_encoder_pretrained.pth.tar'
    torch.save({'state_dict': {IMAGENET_ENCODER_PREFIX + k: v for k, v in enc.items()
                               if not k.startswith('output_conv')}}, path)
    net = ERFNet(ERFNetConfig(num_classes=8))
    with pytest.raises(ModelFileError, match='--pretrained-encoder'):
        init_from_file(net, path, CUSTOM8)


def test_freeze_encoder_leaves_the_encoder_unchanged(cityscapes_model, folder_root, tmp_path):
    out = tmp_path / 'out'
    assert main(['--dataset', 'folder', '--data-root', str(folder_root), '--output-dir',
                 str(out), '--init', str(cityscapes_model), '--freeze-encoder', '--epochs', '2',
                 *TINY]) == 0
    src = read_file(cityscapes_model)['state_dict']
    model, info = load_model(out / 'best.pt')
    last = read_file(out / 'last.pt')['state_dict']
    assert info.classes == CUSTOM8
    # The source's normalisation travels with the weights it was trained with.
    assert info.normalization.mean == (0.3, 0.3, 0.3)
    changed = []
    for k, v in last.items():
        if k.startswith('encoder.') and not k.startswith('encoder.output_conv.'):
            assert torch.equal(v, src[k]), f'{k} changed'  # weights and BN statistics
        elif k.startswith('decoder.') and not k.startswith('decoder.output_conv.'):
            changed.append(not torch.equal(v, src[k]))
    assert any(changed), 'the decoder should train'


def test_zero_epochs_converts_an_official_file(tmp_path, folder_root):
    torch.manual_seed(3)
    official = ERFNet(ERFNetConfig(num_classes=20))
    path = tmp_path / 'erfnet_pretrained.pth'
    torch.save({f'module.{k}': v for k, v in official.state_dict().items()}, path)
    out = tmp_path / 'out'
    assert main(['--dataset', 'folder', '--data-root', str(folder_root), '--output-dir',
                 str(out), '--init', str(path), '--epochs', '0', *TINY]) == 0
    model, info = load_model(out / 'best.pt')
    assert info.classes == CUSTOM8
    assert info.normalization == Normalization()
    city = cityscapes_table().names
    assert torch.equal(model.encoder.output_conv.bias[CUSTOM8.index('sky')],
                       official.encoder.output_conv.bias[city.index('sky')])


def test_pretrained_encoder_file(tmp_path, folder_root):
    torch.manual_seed(4)
    enc = ERFNet(ERFNetConfig(num_classes=1000)).encoder.state_dict()
    path = tmp_path / 'erfnet_encoder_pretrained.pth.tar'
    body = {k: v for k, v in enc.items() if not k.startswith('output_conv')}
    torch.save({'state_dict': {IMAGENET_ENCODER_PREFIX + k: v for k, v in body.items()}}, path)
    out = tmp_path / 'out'
    assert main(['--dataset', 'folder', '--data-root', str(folder_root), '--output-dir',
                 str(out), '--pretrained-encoder', str(path), '--epochs', '0', *TINY]) == 0
    sd = read_file(out / 'best.pt')['state_dict']
    for k, v in body.items():
        assert torch.equal(sd[f'encoder.{k}'], v), k


def test_synthetic_source_to_custom8_target(tmp_path):
    from seg_training.synth import generate

    source = tmp_path / 'source'
    target = tmp_path / 'target'
    generate(source, 'cityscapes', n_train=4, n_val=2, size=(64, 32), seed=0)
    generate(target, 'folder', 'custom8', n_train=4, n_val=2, size=(64, 32), seed=1)
    assert main(['--dataset', 'cityscapes', '--data-root', str(source), '--output-dir',
                 str(tmp_path / 'src_run'), '--epochs', '1', *TINY]) == 0
    out = tmp_path / 'tgt_run'
    assert main(['--dataset', 'folder', '--data-root', str(target), '--output-dir', str(out),
                 '--init', str(tmp_path / 'src_run' / 'best.pt'), '--epochs', '1', *TINY]) == 0
    _, info = load_model(out / 'best.pt')
    assert info.classes.names == CUSTOM8.names
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['init']['head'] == 'matched'
    assert summary['init']['rows']['vehicle'] == 'car'
