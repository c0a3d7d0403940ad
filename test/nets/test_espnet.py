"""ESPNet (v1): the authors' key layout, their files as published, BGR input, every tool."""

import json
import math
from pathlib import Path
from typing import Dict, Mapping
import zlib

import numpy as np
from PIL import Image
from published import published_state_dict
import pytest
import torch

from seg_perception.pipeline import Frame, SegmentationPipeline
from seg_perception.predict import main as seg_predict
from seg_training.base.classes import CAMVID, cityscapes_table
from seg_training.evaluation.seg_eval import main as seg_eval
from seg_training.export import export_model
from seg_training.nets import architectures, espnet
from seg_training.nets.checkpoint import (detect_format, load_model, ModelFileError, read_file,
                                          save_model)
from seg_training.nets.convert import main as convert
from seg_training.nets.espnet import ESPNet, ESPNetConfig
from seg_training.training.loop import main as seg_train
from test_formats import write_camvid

TINY = torch.finfo(torch.float32).tiny
# Facts of the published files (github.com/sacmehta/ESPNet, pretrained/decoder/): entries of the
# state_dict (saved by PyTorch 0.3: no num_batches_tracked) and a few shapes.
CAMVID_FILE_KEYS = 189          # espnet_p_2_q_8_camvid.pth
CITYSCAPES_FILE_KEYS = {3: 134, 5: 156, 8: 189}  # espnet_p_2_q_{3,5,8}.pth
CAMVID_SHAPES = {
    'encoder.level1.conv.weight': (16, 3, 3, 3),
    'encoder.b1.bn.weight': (19,),
    'encoder.level2_0.c1.conv.weight': (12, 19, 3, 3),
    'encoder.level2_0.d1.conv.weight': (16, 12, 3, 3),
    'encoder.level2.1.bn.act.weight': (64,),
    'encoder.b2.bn.running_var': (131,),
    'encoder.level3_0.c1.conv.weight': (25, 131, 3, 3),
    'encoder.level3.7.d16.conv.weight': (25, 25, 3, 3),
    'encoder.classifier.conv.weight': (12, 256, 1, 1),
    'level3_C.conv.weight': (12, 131, 1, 1),
    'conv.conv.weight': (12, 31, 3, 3),
    'combine_l2_l3.1.c1.conv.weight': (2, 24, 1, 1),
    'combine_l2_l3.1.d1.conv.weight': (4, 2, 3, 3),
    'up_l2.1.act.weight': (12,),
    'classifier.weight': (12, 12, 2, 2),
}
# The authors' CamVid input statistics (BGR, 0..255 pixels).
MEAN_BGR = np.array([110.3310546875, 108.40888977050781, 105.03321838378906], np.float32)
STD_BGR = np.array([72.12568664550781, 72.69076538085938, 69.90434265136719], np.float32)


def authors_state_dict(classes: int = 12, q: int = 8, skip_image: bool = True, seed: int = 0,
                       prefix: str = ''):
    """Make a state_dict in the authors' layout as saved (random weights, no batch counts)."""
    torch.manual_seed(seed)
    return published_state_dict(ESPNet(ESPNetConfig(classes, 2, q, skip_image)), prefix,
                                batch_counts=False)


def keyed_weights(template: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """
    Weights for the keys of ``template``, each drawn from a generator seeded by the key's name.

    They depend on the names and shapes alone, not on the order a network makes its modules,
    so the authors' code and this project's build the same network from them.
    """
    out = {}
    for key, like in template.items():
        if key.endswith('num_batches_tracked'):
            continue
        r = torch.rand(like.shape, generator=torch.Generator().manual_seed(
            zlib.crc32(key.encode())))  # uniform in [0, 1)
        if key.endswith(('running_mean', 'bias')):
            out[key] = 0.2 * (r - 0.5)
        elif like.dim() == 4:  # conv weights: variance 1 / fan-in
            out[key] = (2 * r - 1) * math.sqrt(3.0 / like[0].numel())
        else:  # running_var, BN and PReLU weights
            out[key] = 0.5 + r
    return out


@pytest.fixture(scope='module')
def camvid_file(tmp_path_factory):
    path = tmp_path_factory.mktemp('espnet') / 'espnet_p_2_q_8_camvid.pth'
    torch.save(authors_state_dict(), path)
    return path


def test_layout_is_the_authors_for_the_published_files():
    sd = authors_state_dict()
    assert len(sd) == CAMVID_FILE_KEYS
    for key, shape in CAMVID_SHAPES.items():
        assert tuple(sd[key].shape) == shape, key
    assert espnet.config_of_state_dict(sd) == ESPNetConfig(12, 2, 8, True, True)
    for q, n in CITYSCAPES_FILE_KEYS.items():
        city = authors_state_dict(20, q, skip_image=False)
        assert len(city) == n
        assert tuple(city['conv.conv.weight'].shape) == (20, 36, 3, 3)  # test/Model.py's skip
        assert espnet.config_of_state_dict(city) == ESPNetConfig(20, 2, q, False, True)


# Logits of the authors' networks (train/Model.py: the CamVid variant; test/Model.py: the
# Cityscapes one) with keyed_weights on a seeded 56x40 input, recorded by running their code:
# variant -> (num_classes, q, skip_image, mean |logit|, {(class, y, x): logit}).
AUTHORS_OUTPUTS = {
    'train/Model.py': (12, 3, True, 1.111136, {(0, 0, 0): -1.063976, (1, 5, 7): -0.313493,
                                               (11, 39, 55): -0.765498, (3, 20, 31): 2.140292,
                                               (5, 11, 44): -1.418884}),
    'test/Model.py': (20, 2, False, 0.876074, {(0, 0, 0): 1.059363, (1, 5, 7): 0.335241,
                                               (19, 39, 55): 0.118172, (3, 20, 31): 3.035826,
                                               (5, 11, 44): 2.423806}),
}


@pytest.mark.parametrize('variant', sorted(AUTHORS_OUTPUTS))
def test_forward_is_the_authors(variant):
    classes, q, skip_image, abs_mean, logits = AUTHORS_OUTPUTS[variant]
    net = ESPNet(ESPNetConfig(classes, 2, q, skip_image, input_bgr=False)).eval()
    net.load_state_dict(keyed_weights(net.state_dict()), strict=False)
    x = torch.randn(1, 3, 40, 56, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        y = net(x)[0]  # (K, 40, 56)
    assert y.abs().mean().item() == pytest.approx(abs_mean, abs=1e-5)
    for (k, i, j), value in logits.items():
        assert y[k, i, j].item() == pytest.approx(value, abs=1e-4), (k, i, j)
    assert all(m.eps == espnet.BN_EPS for m in net.modules()
               if isinstance(m, torch.nn.BatchNorm2d))


@pytest.mark.parametrize('prefix', ['', 'module.'])
def test_camvid_file_loads_as_published(tmp_path, prefix):
    sd = authors_state_dict(prefix=prefix)
    path = tmp_path / 'espnet_p_2_q_8_camvid.pth'
    torch.save(sd, path)
    assert detect_format(read_file(path)) == 'espnet'
    model, info = load_model(path)
    assert (info.arch, info.num_classes, info.input_size) == ('espnet', 12, (480, 360))
    assert info.arch_config == {'num_classes': 12, 'p': 2, 'q': 8, 'skip_image': True,
                                'input_bgr': True}
    assert info.classes.names == CAMVID.names + ('void',) and info.classes.void_index == 11
    assert info.resize.method == 'bilinear' and not info.resize.antialias  # cv2 INTER_LINEAR
    assert info.provenance['real_images'] is True
    assert 'sacmehta/ESPNet' in info.provenance['source']
    ref = ESPNet(ESPNetConfig(12)).eval()
    ref.load_state_dict({k[len(prefix):]: v for k, v in sd.items()}, strict=False)
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))


def test_cityscapes_files_load_with_their_class_table_and_statistics(tmp_path):
    path = tmp_path / 'espnet_p_2_q_3.pth'
    torch.save(authors_state_dict(20, 3, skip_image=False), path)
    model, info = load_model(path)
    assert info.arch_config['q'] == 3 and info.arch_config['skip_image'] is False
    assert info.classes == cityscapes_table(with_void=True)
    assert info.input_size == (1024, 512)
    # test/VisualizeResults.py: BGR mean [72.39, 82.91, 73.16], std [45.32, 46.15, 44.91].
    assert info.normalization.mean == pytest.approx((73.15840149 / 255, 82.90893555 / 255,
                                                     72.3923111 / 255))
    assert info.normalization.std == pytest.approx((44.91483307, 46.15289307, 45.3192215))


@pytest.mark.parametrize('change, named', [
    (lambda sd: sd.update({'level3_C.extra.weight': torch.zeros(2)}), 'level3_C.extra.weight'),
    (lambda sd: sd.pop('encoder.level3.2.d8.conv.weight'), 'encoder.level3.2.d8.conv.weight'),
    (lambda sd: sd.update({'up_l2.1.bn.weight': torch.ones(11)}), 'up_l2.1.bn.weight'),
])
def test_a_key_that_does_not_fit_is_refused_by_name(tmp_path, change, named):
    sd = authors_state_dict()
    change(sd)
    path = tmp_path / 'bad.pth'
    torch.save(sd, path)
    with pytest.raises(ModelFileError, match=named.replace('.', r'\.')):
        load_model(path)


def test_files_without_a_known_class_table_or_decoder_are_refused(tmp_path):
    torch.save(authors_state_dict(8), tmp_path / 'eight.pth')
    with pytest.raises(ModelFileError, match='8 outputs; only the authors.* CamVid'):
        load_model(tmp_path / 'eight.pth')
    encoder = {k[len('encoder.'):]: v for k, v in authors_state_dict().items()
               if k.startswith('encoder.')}
    torch.save(encoder, tmp_path / 'espnet_c.pth')
    with pytest.raises(ModelFileError, match='ESPNet-C encoder'):
        load_model(tmp_path / 'espnet_c.pth')
    many = authors_state_dict()  # blocks are counted from the keys: bounded before building
    for i in range(2, 41):
        many[f'encoder.level2.{i}.c1.conv.weight'] = torch.zeros(12, 64, 1, 1)
    torch.save(many, tmp_path / 'many.pth')
    with pytest.raises(ModelFileError, match=r'many\.pth: ESPNet p must be an integer in 1\.\.32'):
        load_model(tmp_path / 'many.pth')


def test_denormal_weights_are_flushed_on_load_and_change_no_output(tmp_path):
    sd = authors_state_dict()
    key = 'encoder.level3.4.d4.conv.weight'
    clean = sd[key].clone()
    sd[key].view(-1)[:100] = 1e-40  # denormal float32, as thousands are in the published files
    path = tmp_path / 'denormal.pth'
    torch.save(sd, path)
    model, _ = load_model(path)
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            assert not ((v != 0) & (v.abs() < TINY)).any(), f'denormal left in {k}'
    assert torch.equal(model.state_dict()[key].view(-1)[100:], clean.view(-1)[100:])
    raw = ESPNet(ESPNetConfig(12)).eval()
    raw.load_state_dict(sd, strict=False)  # denormals kept
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), raw(x))


@pytest.mark.parametrize('size', [(64, 48), (120, 88), (480, 360)])
def test_forward_at_multiples_of_8(size):
    net = ESPNet(ESPNetConfig(12, 1, 1)).eval()
    w, h = size
    with torch.no_grad():
        assert net(torch.randn(1, 3, h, w)).shape == (1, 12, h, w)


def test_other_sizes_are_refused_and_could_not_run(monkeypatch):
    net = ESPNet(ESPNetConfig(12, 1, 1)).eval()
    with pytest.raises(ValueError, match=r'ESPNet input .* multiples of 8, got 64x44'):
        net(torch.randn(1, 3, 44, 64))
    # The check only names what would fail: the decoder's concatenations need exact halves.
    monkeypatch.setattr(espnet, 'check_input_size', lambda h, w: None)
    with torch.no_grad(), pytest.raises(RuntimeError, match='Sizes of tensors must match'):
        net(torch.randn(1, 3, 44, 64))


def test_pipeline_refuses_a_size_the_network_cannot_run(camvid_file):
    with pytest.raises(ValueError, match='ESPNet input .* multiples of 8'):
        SegmentationPipeline(*load_model(camvid_file), device='cpu', input_size=(100, 60),
                             warmup=False)


def test_project_preprocessing_gives_the_authors_input(camvid_file):
    """
    The authors: OpenCV BGR image, ``(bgr - mean) / std``, then ``/ 255`` (train/Transforms.py).

    The project: RGB to [0, 1], its per-channel mean and std; the network reverses the channels.
    """
    _, info = load_model(camvid_file)
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    bgr = rgb[:, :, ::-1].astype(np.float32)
    by_hand = np.empty_like(bgr)
    for c in range(3):
        by_hand[:, :, c] = (bgr[:, :, c] - MEAN_BGR[c]) / STD_BGR[c]
    authors = torch.from_numpy((by_hand / 255).transpose(2, 0, 1).copy())  # (3, H, W) BGR
    ours = info.preprocessing((24, 16)).image(rgb)  # (3, H, W) RGB
    torch.testing.assert_close(ours.flip(0), authors, atol=1e-6, rtol=1e-5)
    # End to end: the loaded model on the project's input is the authors' network (the same
    # weights, no channel reversal) on the authors' input.
    model, _ = load_model(camvid_file)
    authors_net = ESPNet(ESPNetConfig(12, input_bgr=False)).eval()
    authors_net.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(ours[None]), authors_net(authors[None]), atol=1e-5,
                                   rtol=1e-4)


@pytest.mark.parametrize('accelerate', ['none', 'channels_last', 'onnxruntime'])
def test_pipeline_engines_agree_with_eager(camvid_file, accelerate):
    rng = np.random.default_rng(0)
    frame = Frame(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8), 'rgb8')
    eager = SegmentationPipeline(*load_model(camvid_file), device='cpu', accelerate='none',
                                 input_size=(120, 88), warmup=False)
    other = SegmentationPipeline(*load_model(camvid_file), device='cpu', accelerate=accelerate,
                                 input_size=(120, 88), warmup=False)
    torch.testing.assert_close(other.logits([frame]), eager.logits([frame]), atol=1e-3,
                               rtol=1e-3)
    assert other([frame])[0].labels.shape == (90, 120)


@pytest.mark.parametrize('fmt', ['onnx', 'torchscript'])
def test_export_is_checked_against_pytorch(camvid_file, tmp_path, fmt):
    result = export_model(camvid_file, fmt, tmp_path / f'm.{fmt}', size=(120, 88))
    assert result.max_abs_diff < 1e-3
    assert Path(result.path).is_file()


def test_convert_writes_a_project_file_with_the_same_network(camvid_file, tmp_path):
    out = tmp_path / 'espnet_camvid.pt'
    assert convert([str(camvid_file), str(out)]) == 0
    obj = read_file(out)
    assert detect_format(obj) == 'project'
    assert obj['arch'] == 'espnet' and obj['input_size'] == [480, 360]
    assert obj['arch_config'] == {'num_classes': 12, 'p': 2, 'q': 8, 'skip_image': True,
                                  'input_bgr': True}
    assert obj['classes']['void_index'] == 11
    assert obj['normalization']['mean'] == pytest.approx((MEAN_BGR[::-1] / 255).tolist())
    assert obj['normalization']['std'] == pytest.approx(STD_BGR[::-1].tolist())
    assert obj['preprocess'] == {'resize': 'bilinear', 'antialias': False}
    published, _ = load_model(camvid_file)
    converted, info = load_model(out)
    assert info.provenance == load_model(camvid_file)[1].provenance
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        assert torch.equal(converted(x), published(x))
    # A project file with an arch_config no ESPNet can be built with is refused by field.
    obj['arch_config']['p'] = 0
    torch.save(obj, tmp_path / 'bad.pt')
    with pytest.raises(ModelFileError, match='ESPNet p must be an integer in 1..32'):
        load_model(tmp_path / 'bad.pt')


def test_seg_eval_scores_camvid_with_the_void_output_left_out(camvid_file, tmp_path):
    root = write_camvid(tmp_path / 'camvid', counts=(('test', 2),))
    out = tmp_path / 'eval.json'
    assert seg_eval(['--model', str(camvid_file), '--dataset', 'camvid', '--data-root',
                     str(root), '--split', 'test', '--device', 'cpu', '--json', str(out)]) == 0
    report = json.loads(out.read_text())
    assert sorted(report['per_class_iou']) == sorted(CAMVID.names)
    assert 0.0 <= report['miou'] <= 1.0


def test_seg_predict_writes_labels_at_the_image_size(camvid_file, tmp_path):
    rng = np.random.default_rng(2)
    image = tmp_path / 'frame.png'
    Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(image)
    assert seg_predict(['--model', str(camvid_file), '--device', 'cpu', '--output-dir',
                        str(tmp_path / 'out'), str(image)]) == 0
    labels = np.array(Image.open(tmp_path / 'out' / 'frame_labels.png'))
    assert labels.shape == (60, 80) and labels.max() < 12


def test_seg_train_refuses_to_fine_tune_espnet(camvid_file, tmp_path, capsys):
    root = write_camvid(tmp_path / 'camvid', counts=(('train', 2), ('val', 1)))
    project = tmp_path / 'espnet.pt'
    model, info = load_model(camvid_file)
    save_model(model, info, project)
    for init in (camvid_file, project):
        rc = seg_train(['--dataset', 'camvid', '--data-root', str(root), '--output-dir',
                        str(tmp_path / 'run'), '--init', str(init), '--epochs', '0', '--size',
                        '64x48', '--workers', '0', '--no-plots'])
        assert rc != 0
        assert 'ESPNet (v1) model, which seg-train does not train' in capsys.readouterr().err
    assert architectures.get('espnet').stride == 8
