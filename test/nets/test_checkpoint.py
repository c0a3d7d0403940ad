"""Model files: the project's own format and the official ERFNet files, loaded weights-only."""

from pathlib import Path

import pytest
import torch
from torch import nn

from seg_training.base.classes import CUSTOM8
from seg_training.nets.checkpoint import (atomic_save, build_model, load_imagenet_encoder,
                                          load_model, ModelFileError, ModelInfo, Normalization,
                                          read_file, save_model)
from seg_training.nets.model import ERFNet, ERFNetConfig


def assert_same_weights(a: nn.Module, b: nn.Module, skip_suffix: str = '') -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        if not (skip_suffix and k.endswith(skip_suffix)):
            assert torch.equal(sa[k], sb[k]), k


def random_erfnet(num_classes: int, seed: int) -> ERFNet:
    """Build an ERFNet with random weights and non-trivial BN statistics."""
    torch.manual_seed(seed)
    model = ERFNet(ERFNetConfig(num_classes=num_classes))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.num_batches_tracked.fill_(7)
    return model.eval()


@pytest.fixture(scope='module')
def official20():
    return random_erfnet(20, seed=3)


def official_file(model: ERFNet, path: Path, edit=None) -> Path:
    """Write ``model`` the way the ERFNet authors published it: a DataParallel state_dict."""
    sd = nn.DataParallel(model).state_dict()
    assert all(k.startswith('module.') for k in sd)
    if edit:
        edit(sd)
    torch.save(sd, path)
    return path


def test_project_file_round_trip(tmp_path):
    info = ModelInfo(classes=CUSTOM8, input_size=(96, 48),
                     normalization=Normalization((0.1, 0.2, 0.3), (0.4, 0.5, 0.6)),
                     train_config={'epochs': 3}, metrics={'miou': 0.5})
    model = random_erfnet(CUSTOM8.num_classes, seed=1)
    path = tmp_path / 'model.pt'
    save_model(model, info, path)
    loaded, info2 = load_model(path)
    assert_same_weights(model, loaded)
    assert not loaded.training
    assert info2 == info


def test_fp16_storage_loads_as_fp32(tmp_path):
    info = ModelInfo(classes=CUSTOM8, input_size=(64, 32))
    model = random_erfnet(CUSTOM8.num_classes, seed=2)
    full, half = tmp_path / 'full.pt', tmp_path / 'half.pt'
    save_model(model, info, full)
    save_model(model, info, half, half=True)
    stored = read_file(half)['state_dict']
    assert stored['encoder.initial_block.conv.weight'].dtype == torch.float16
    assert stored['encoder.initial_block.bn.num_batches_tracked'].dtype == torch.int64
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded, _ = load_model(half)
    for k, v in loaded.state_dict().items():
        ref = model.state_dict()[k]
        assert v.dtype == ref.dtype, k
        if v.is_floating_point():
            assert torch.equal(v, ref.half().float()), k


def test_extra_entries_travel_with_the_model(tmp_path):
    info = ModelInfo(classes=CUSTOM8, input_size=(64, 32))
    path = tmp_path / 'last.pt'
    save_model(build_model(info), info, path, extra={'training_state': {'epoch': 4}})
    assert read_file(path)['training_state'] == {'epoch': 4}
    load_model(path)


def test_official_dataparallel_file_loads(tmp_path, official20):
    path = official_file(official20, tmp_path / 'erfnet_pretrained.pth')
    model, info = load_model(path)
    assert_same_weights(official20, model)
    assert info.num_classes == 20 and info.classes.void_index == 19
    assert info.classes.names[0] == 'road' and info.classes.names[18] == 'bicycle'
    assert info.input_size == (1024, 512)
    assert info.normalization == Normalization((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    x = torch.rand(1, 3, 16, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), official20(x), rtol=0, atol=0)


def test_official_file_without_num_batches_tracked_loads(tmp_path, official20):
    def drop(sd):
        for k in [k for k in sd if k.endswith('num_batches_tracked')]:
            del sd[k]

    path = official_file(official20, tmp_path / 'erfnet_pretrained.pth', drop)
    model, _ = load_model(path)
    assert_same_weights(official20, model, skip_suffix='num_batches_tracked')
    # The file had no counters: the model keeps its fresh ones.
    assert model.encoder.initial_block.bn.num_batches_tracked.item() == 0


def test_imagenet_encoder_file_initialises_the_encoder(tmp_path):
    source = random_erfnet(20, seed=4)
    body = {k: v for k, v in source.encoder.state_dict().items()
            if not k.startswith('output_conv.')}
    sd = {'module.features.encoder.' + k: v for k, v in body.items()}
    sd['module.classifier.linear.weight'] = torch.randn(1000, 128)
    sd['module.classifier.linear.bias'] = torch.randn(1000)
    path = tmp_path / 'erfnet_encoder_pretrained.pth.tar'
    torch.save({'state_dict': sd}, path)

    target = random_erfnet(8, seed=5)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    load_imagenet_encoder(path, target)
    after = target.state_dict()
    for k, v in body.items():
        assert torch.equal(after['encoder.' + k], v), k
    for k in after:
        if k.startswith(('decoder.', 'encoder.output_conv.')):
            assert torch.equal(after[k], before[k]), k

    with pytest.raises(ModelFileError, match='ImageNet'):
        load_model(path)  # no segmentation head: not runnable


def test_imagenet_encoder_loader_refuses_other_files(tmp_path, official20):
    path = official_file(official20, tmp_path / 'erfnet_pretrained.pth')
    with pytest.raises(ModelFileError, match='not an ERFNet ImageNet encoder'):
        load_imagenet_encoder(path, random_erfnet(20, seed=0))


def test_imagenet_encoder_missing_key_is_named(tmp_path):
    body = random_erfnet(20, seed=6).encoder.state_dict()
    sd = {'module.features.encoder.' + k: v for k, v in body.items()
          if not k.startswith(('output_conv.', 'layers.4.conv1x3_2.'))}
    path = tmp_path / 'erfnet_encoder_pretrained.pth.tar'
    torch.save({'state_dict': sd}, path)
    with pytest.raises(ModelFileError, match=r'missing keys.*layers\.4\.conv1x3_2\.bias'):
        load_imagenet_encoder(path, random_erfnet(20, seed=0))


def test_unknown_key_is_named(tmp_path, official20):
    def add(sd):
        sd['module.encoder.layers.2.extra.weight'] = torch.zeros(3)

    path = official_file(official20, tmp_path / 'erfnet_pretrained.pth', add)
    with pytest.raises(ModelFileError) as e:
        load_model(path)
    assert 'unknown keys' in str(e.value) and 'encoder.layers.2.extra.weight' in str(e.value)
    assert str(path) in str(e.value)


def test_missing_key_is_named(tmp_path, official20):
    def drop(sd):
        del sd['module.decoder.layers.1.bn2.running_var']

    path = official_file(official20, tmp_path / 'erfnet_pretrained.pth', drop)
    with pytest.raises(ModelFileError) as e:
        load_model(path)
    assert "missing keys ['decoder.layers.1.bn2.running_var']" in str(e.value)


def test_mis_shaped_key_is_named(tmp_path, official20):
    def reshape(sd):
        sd['module.encoder.layers.3.conv3x1_1.weight'] = torch.zeros(64, 64, 1, 3)

    path = official_file(official20, tmp_path / 'erfnet_pretrained.pth', reshape)
    with pytest.raises(ModelFileError,
                       match=r'mis-shaped keys.*encoder\.layers\.3\.conv3x1_1\.weight: '
                             r'file \(64, 64, 1, 3\) vs model \(64, 64, 3, 1\)'):
        load_model(path)


def test_project_file_with_missing_key_is_named(tmp_path):
    info = ModelInfo(classes=CUSTOM8, input_size=(64, 32))
    path = tmp_path / 'model.pt'
    save_model(build_model(info), info, path)
    d = read_file(path)
    del d['state_dict']['encoder.output_conv.bias']
    torch.save(d, path)
    with pytest.raises(ModelFileError, match=r'missing keys.*encoder\.output_conv\.bias'):
        load_model(path)


def test_official_file_with_other_class_count_is_refused(tmp_path):
    path = official_file(random_erfnet(19, seed=0), tmp_path / 'erfnet_pretrained.pth')
    with pytest.raises(ModelFileError, match='19 outputs'):
        load_model(path)


def test_unknown_content_and_missing_file(tmp_path):
    path = tmp_path / 'numbers.pt'
    torch.save({'a': 1, 'b': [2, 3]}, path)
    with pytest.raises(ModelFileError, match='not a seg_perception model file'):
        load_model(path)
    with pytest.raises(ModelFileError, match='nowhere.pt: model file not found'):
        load_model(tmp_path / 'nowhere.pt')


def test_newer_format_version_is_refused(tmp_path):
    info = ModelInfo(classes=CUSTOM8, input_size=(64, 32))
    path = tmp_path / 'model.pt'
    save_model(build_model(info), info, path, extra={'format_version': 99})
    with pytest.raises(ModelFileError, match='format_version 99'):
        load_model(path)


class _Touch:
    """Unpickling this object would create a file: arbitrary code in a model file."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return Path.touch, (self.target,)


def test_pickled_objects_are_refused(tmp_path, official20):
    marker = tmp_path / 'code-ran'
    sd = nn.DataParallel(official20).state_dict()
    sd['module.payload'] = _Touch(marker)
    path = tmp_path / 'erfnet_pretrained.pth'
    torch.save(sd, path)
    with pytest.raises(ModelFileError, match='weights-only') as e:
        load_model(path)
    assert str(path) in str(e.value)
    assert not marker.exists()


def test_atomic_save_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / 'sub' / 'file.pt'
    atomic_save({'v': torch.ones(2)}, path)
    atomic_save({'v': torch.zeros(2)}, path)
    assert torch.equal(read_file(path)['v'], torch.zeros(2))
    assert [p.name for p in path.parent.iterdir()] == ['file.pt']
