"""ESPNetv2: the authors' key layout, their files as published, every tool, denormals, transfer."""

import io
from pathlib import Path

import numpy as np
from published import published_state_dict
import pytest
import torch

from seg_perception.engines import export_onnx, ONNX_OPSET
from seg_perception.pipeline import Frame, SegmentationPipeline
from seg_training.base.classes import cityscapes_table, CUSTOM8
from seg_training.export import export_model
from seg_training.nets import architectures
from seg_training.nets.checkpoint import (detect_format, load_model, ModelFileError, ModelInfo,
                                          Normalization, read_file, save_model)
from seg_training.nets.espnetv2 import ESPNetv2, ESPNetv2Config, PReLU, scale_of_state_dict
from seg_training.training.loop import main as seg_train
from training_data import write_folder

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = ROOT / 'models' / 'espnetv2_cityscapes.pt'
TINY = ['--size', '64x32', '--batch-size', '4', '--workers', '0', '--no-plots']


def authors_state_dict(scale: float = 0.5, classes: int = 20, seed: int = 0, prefix: str = ''):
    """Make a state_dict in the authors' layout (random weights, non-trivial BN statistics)."""
    torch.manual_seed(seed)
    return published_state_dict(ESPNetv2(ESPNetv2Config(classes, scale)), prefix)


@pytest.fixture(scope='module')
def authors_file(tmp_path_factory):
    path = tmp_path_factory.mktemp('espnetv2') / 'espnetv2_s_0.5_city_1024x512.pth'
    torch.save(authors_state_dict(0.5), path)
    return path


def test_layout_is_the_authors_for_the_published_widths():
    # Facts of espnetv2_s_2.0_city_1024x512.pth (EdgeNets): 526 entries, these shapes.
    sd = ESPNetv2(ESPNetv2Config(20, 2.0)).state_dict()
    assert len(sd) == 526
    shapes = {'base_net.level1.conv.weight': (32, 3, 3, 3),
              'base_net.level2_0.eesp.proj_1x1.conv.weight': (24, 8, 1, 1),
              'base_net.level2_0.inp_reinf.1.conv.weight': (128, 3, 1, 1),
              'base_net.level4.6.spp_dw.3.conv.weight': (128, 1, 3, 3),
              'bu_dec_l1.merge_layer.2.cbr.0.weight': (10, 5, 3, 3),
              'merge_enc_dec_l2.expansion_layer.cbr.0.weight': (64, 4, 3, 3),
              'merge_enc_dec_l4.wt_layer.1.weight': (32, 32, 1, 1),
              'bu_br_l3.1.weight': (48,),
              'bu_dec_l4.merge_layer.3.weight': (20, 10, 1, 1),
              'bu_dec_l4.merge_layer.3.bias': (20,)}
    for key, shape in shapes.items():
        assert tuple(sd[key].shape) == shape, key
    assert 'bu_dec_l4.br.br.0.weight' not in sd  # the last pyramid block ends in the head
    for scale in (0.5, 1.0, 1.25, 1.5, 2.0):
        assert scale_of_state_dict(ESPNetv2(ESPNetv2Config(20, scale)).state_dict()) == scale


def test_bundled_model_is_the_authors_cityscapes_model():
    obj = read_file(BUNDLED)
    assert obj['arch'] == 'espnetv2'
    assert obj['arch_config'] == {'num_classes': 20, 'scale': 2.0, 'proj_planes': 10}
    assert obj['input_size'] == [1024, 512]
    assert obj['normalization']['mean'] == pytest.approx([0.485, 0.456, 0.406])
    assert obj['preprocess'] == {'resize': 'bilinear', 'antialias': True}
    assert obj['provenance']['real_images'] is True
    assert 'EdgeNets' in obj['provenance']['source']
    model, info = load_model(BUNDLED)
    assert info.classes.names[:19] == cityscapes_table().names
    assert info.classes.void_index == 19
    tiny = torch.finfo(torch.float32).tiny
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            assert not ((v != 0) & (v.abs() < tiny)).any(), f'denormal left in {k}'


@pytest.mark.parametrize('prefix', ['', 'module.'])
def test_authors_file_loads_as_published(tmp_path, prefix):
    sd = authors_state_dict(0.5, prefix=prefix)
    path = tmp_path / 'espnetv2.pth'
    torch.save(sd, path)
    assert detect_format(read_file(path)) == 'espnetv2'
    model, info = load_model(path)
    assert (info.arch, info.arch_config['scale'], info.num_classes) == ('espnetv2', 0.5, 20)
    assert info.input_size == (1024, 512)
    assert info.resize.method == 'bilinear' and info.resize.antialias
    assert info.provenance['real_images'] is True
    ref = ESPNetv2(ESPNetv2Config(20, 0.5)).eval()
    ref.load_state_dict({k[len(prefix):]: v for k, v in sd.items()})
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))


def test_authors_file_with_a_foreign_key_is_refused_by_name(tmp_path):
    sd = authors_state_dict(0.5)
    sd['bu_dec_l2.extra.weight'] = torch.zeros(3)
    path = tmp_path / 'bad.pth'
    torch.save(sd, path)
    with pytest.raises(ModelFileError, match='bu_dec_l2.extra.weight'):
        load_model(path)


def test_denormal_weights_are_flushed_on_load_with_the_same_output(tmp_path):
    sd = authors_state_dict(0.5)
    key = 'base_net.level3.0.proj_1x1.conv.weight'
    clean = sd[key].clone()
    sd[key].view(-1)[:50] = 1e-40  # denormal float32
    path = tmp_path / 'denormal.pth'
    torch.save(sd, path)
    model, _ = load_model(path)
    flushed = model.state_dict()[key]
    assert (flushed.view(-1)[:50] == 0).all()
    assert torch.equal(flushed.view(-1)[50:], clean.view(-1)[50:])
    # Project files too: a project file written with denormals loads flushed.
    info = ModelInfo(classes=CUSTOM8, input_size=(64, 32), arch='espnetv2',
                     arch_options={'scale': 0.5})
    net = architectures.build('espnetv2', info.arch_config)
    with torch.no_grad():
        net.state_dict()['bu_dec_l1.stages.0.weight'].view(-1)[:5] = 1e-39
    save_model(net, info, tmp_path / 'project.pt')
    loaded, _ = load_model(tmp_path / 'project.pt')
    assert (loaded.state_dict()['bu_dec_l1.stages.0.weight'].view(-1)[:5] == 0).all()


@pytest.mark.parametrize('size', [(64, 32), (80, 48), (128, 96)])
def test_forward_at_multiples_of_16_and_refusal_otherwise(size):
    net = ESPNetv2(ESPNetv2Config(11, 0.5)).eval()
    w, h = size
    with torch.no_grad():
        assert net(torch.randn(2, 3, h, w)).shape == (2, 11, h, w)
    with pytest.raises(ValueError, match='multiples of 16'):
        net(torch.randn(1, 3, 40, 64))


def test_project_file_round_trip_and_wrong_arch_config(tmp_path):
    info = ModelInfo(classes=CUSTOM8, input_size=(64, 32), arch='espnetv2',
                     arch_options={'scale': 1.0},
                     normalization=Normalization((0.5, 0.5, 0.5), (0.2, 0.2, 0.2)))
    torch.manual_seed(3)
    net = architectures.build('espnetv2', info.arch_config).eval()
    path = tmp_path / 'e.pt'
    save_model(net, info, path)
    obj = read_file(path)
    assert obj['arch_config'] == {'num_classes': 8, 'scale': 1.0, 'proj_planes': 4}
    model, got = load_model(path)
    x = torch.randn(1, 3, 32, 64)
    with torch.no_grad():
        assert torch.equal(model(x), net(x))
    assert got.arch == 'espnetv2' and got.arch_config == obj['arch_config']
    obj['arch_config']['scale'] = 3.0
    torch.save(obj, tmp_path / 'bad_scale.pt')
    with pytest.raises(ModelFileError, match='scale'):
        load_model(tmp_path / 'bad_scale.pt')
    obj['arch_config']['scale'] = 1.0
    obj['input_size'] = [72, 32]
    torch.save(obj, tmp_path / 'bad_size.pt')
    with pytest.raises(ModelFileError, match='multiples of 16'):
        load_model(tmp_path / 'bad_size.pt')


@pytest.mark.parametrize('accelerate', ['none', 'channels_last', 'onnxruntime'])
def test_pipeline_engines_agree_with_eager(authors_file, accelerate):
    model, info = load_model(authors_file)
    rng = np.random.default_rng(0)
    frame = Frame(rng.integers(0, 256, (96, 192, 3), dtype=np.uint8), 'rgb8')
    eager = SegmentationPipeline(model, info, device='cpu', accelerate='none',
                                 input_size=(128, 64), warmup=False)
    other = SegmentationPipeline(*load_model(authors_file), device='cpu', accelerate=accelerate,
                                 input_size=(128, 64), warmup=False)
    torch.testing.assert_close(other.logits([frame]), eager.logits([frame]), atol=1e-3,
                               rtol=1e-3)
    assert other([frame])[0].labels.shape == (96, 192)


def test_prelu_exports_as_relu_and_clip_with_the_same_values():
    import onnx
    import onnxruntime as ort

    layer = PReLU(4).eval()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([0.25, -0.5, 0.0, 2.0]))
    x = torch.randn(2, 4, 5, 6, generator=torch.Generator().manual_seed(0))
    x[0, :, 0, 0] = 0.0
    x[1, :, 0, 0] = -1e-30  # denormal-sized negatives too
    buf = io.BytesIO()
    torch.onnx.export(layer, (x,), buf, opset_version=ONNX_OPSET, dynamo=False)
    data = buf.getvalue()
    ops = {n.op_type for n in onnx.load_from_string(data).graph.node}
    assert 'PRelu' not in ops and {'Relu', 'Clip'} <= ops
    session = ort.InferenceSession(data, providers=['CPUExecutionProvider'])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert torch.equal(torch.from_numpy(out), layer(x))  # bit for bit, not just close
    assert list(layer.state_dict()) == ['weight']  # nn.PReLU's parameters


def test_whole_network_exports_without_onnx_prelu(authors_file):
    import onnx

    model, _ = load_model(authors_file)
    graph = onnx.load_from_string(export_onnx(model.eval(), 64, 128)).graph
    assert not [n.name for n in graph.node if n.op_type == 'PRelu']
    assert sum(isinstance(m, PReLU) for m in model.modules()) > 0


def test_pipeline_refuses_a_size_the_network_cannot_run(authors_file):
    with pytest.raises(ValueError, match='ESPNetv2 input .* multiples of 16'):
        SegmentationPipeline(*load_model(authors_file), device='cpu', input_size=(72, 40),
                             warmup=False)


@pytest.mark.parametrize('fmt', ['onnx', 'torchscript'])
def test_export_is_checked_against_pytorch(authors_file, tmp_path, fmt):
    result = export_model(authors_file, fmt, tmp_path / f'm.{fmt}', size=(128, 64))
    assert result.max_abs_diff < 1e-3
    assert Path(result.path).is_file()


@pytest.fixture(scope='module')
def folder_root(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp('f') / 'f', n_train=4, n_val=2)


def test_seg_train_fine_tunes_an_authors_file_with_head_rows_by_name(
        authors_file, folder_root, tmp_path):
    out = tmp_path / 'run'
    assert seg_train(['--dataset', 'folder', '--data-root', str(folder_root), '--output-dir',
                      str(out), '--init', str(authors_file), '--epochs', '0', *TINY]) == 0
    src = read_file(authors_file)
    best = read_file(out / 'best.pt')
    assert best['arch'] == 'espnetv2'
    assert best['arch_config'] == {'num_classes': 8, 'scale': 0.5, 'proj_planes': 10}
    sd = best['state_dict']
    body = [k for k in src if k not in architectures.get('espnetv2').head_keys]
    assert all(torch.equal(sd[k], src[k]) for k in body)
    city = cityscapes_table(with_void=True).names
    head = 'bu_dec_l4.merge_layer.3.weight'
    for i, name in enumerate(CUSTOM8.names):
        if name in city:  # road, sidewalk, building, pole, vegetation, sky, person
            assert torch.equal(sd[head][i], src[head][city.index(name)]), name
    assert torch.equal(sd[head][CUSTOM8.names.index('vehicle')], src[head][city.index('car')])


def test_seg_train_espnetv2_from_scratch_with_a_frozen_encoder(folder_root, tmp_path):
    out = tmp_path / 'scratch'
    assert seg_train(['--dataset', 'folder', '--data-root', str(folder_root), '--output-dir',
                      str(out), '--arch', 'espnetv2', '--arch-scale', '0.5', '--epochs', '1',
                      '--freeze-encoder', *TINY]) == 0
    obj = read_file(out / 'last.pt')
    assert obj['arch'] == 'espnetv2' and obj['arch_config']['scale'] == 0.5
    assert obj['arch_config']['proj_planes'] == 4  # min(8 classes // 2, 16)
    model, info = load_model(out / 'best.pt')
    assert info.arch == 'espnetv2'
    # Resume keeps the architecture: one more epoch on the same network.
    assert seg_train(['--output-dir', str(out), '--resume', '--epochs', '2']) == 0
    assert read_file(out / 'last.pt')['arch_config'] == obj['arch_config']


def test_seg_train_refuses_an_init_of_another_architecture(authors_file, folder_root, tmp_path,
                                                           capsys):
    rc = seg_train(['--dataset', 'folder', '--data-root', str(folder_root), '--output-dir',
                    str(tmp_path / 'x'), '--init', str(authors_file), '--arch', 'erfnet',
                    '--epochs', '0', *TINY])
    assert rc != 0
    assert 'espnetv2 model but --arch is erfnet' in capsys.readouterr().err
