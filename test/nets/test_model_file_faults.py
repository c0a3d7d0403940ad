"""Hostile or damaged model files: every tool and the node refuse them at load, saying why."""

from pathlib import Path

import cv2
import numpy as np
import pytest
from ros_probe import NodeProcess
import torch

from seg_perception import bag, predict
from seg_training import export
from seg_training.evaluation import seg_eval as evaluate
from seg_training.nets.checkpoint import load_model, ModelFileError, read_file
from seg_training.nets.model import ERFNet, ERFNetConfig
from seg_training.training import loop as train
from test_bag import write_bag
from training_data import write_folder

NAN_TENSOR = 'encoder.initial_block.conv.weight'
INF_TENSOR = 'decoder.output_conv.bias'


def _edited(src: Path, dst: Path, edit) -> Path:
    obj = read_file(src)
    edit(obj)
    torch.save(obj, dst)
    return dst


def _poison(obj) -> None:
    obj['state_dict'][NAN_TENSOR].view(-1)[3] = float('nan')
    obj['state_dict'][INF_TENSOR][1] = float('-inf')


def _huge_input(obj) -> None:
    obj['input_size'] = [100000, 100000]


def _wrong_provenance(obj) -> None:
    obj['provenance'] = {'datasets': 3, 'init': None, 'real_images': True,
                         'best_val_miou': '0.9'}


@pytest.fixture(scope='module')
def bad_models(tmp_path_factory, tiny_model_file):
    """{kind: path}: NaN/Inf, huge input, wrong-type provenance, an empty file, a folder."""
    d = tmp_path_factory.mktemp('bad_models')
    empty = d / 'empty.pt'
    empty.write_bytes(b'')
    (d / 'folder.pt').mkdir()
    return {'nan': _edited(tiny_model_file, d / 'nan.pt', _poison),
            'huge': _edited(tiny_model_file, d / 'huge.pt', _huge_input),
            'provenance': _edited(tiny_model_file, d / 'provenance.pt', _wrong_provenance),
            'empty': empty, 'folder': d / 'folder.pt'}


EXPECTED = {
    'nan': [NAN_TENSOR, '1 NaN', INF_TENSOR, '1 Inf', 'not finite in 2 tensors'],
    'huge': ['100000x100000', 'exceeds the bound of 8192 pixels per side'],
    'provenance': ["provenance.best_val_miou is str '0.9', not a finite number"],
    'empty': ['is empty (0 bytes)'],
    'folder': ['is a directory, not a model file'],
}


@pytest.mark.parametrize('kind', sorted(EXPECTED))
def test_load_model_refuses_with_the_reason(bad_models, kind):
    with pytest.raises(ModelFileError) as e:
        load_model(bad_models[kind])
    assert str(e.value).startswith(f'{bad_models[kind]}: ')
    for words in EXPECTED[kind]:
        assert words in str(e.value)


def test_official_format_with_nan_is_refused(tmp_path):
    net = ERFNet(ERFNetConfig(num_classes=20))
    sd = {f'module.{k}': v.clone() for k, v in net.state_dict().items()}
    sd['module.decoder.output_conv.weight'][0, 0, 0, 0] = float('inf')
    torch.save(sd, tmp_path / 'erfnet_pretrained.pth')
    with pytest.raises(ModelFileError, match='decoder.output_conv.weight \\(0 NaN, 1 Inf'):
        load_model(tmp_path / 'erfnet_pretrained.pth')


def test_a_sane_file_still_loads(tiny_model_file):
    model, info = load_model(tiny_model_file)
    assert info.input_size == (64, 32)
    assert all(torch.isfinite(v).all() for v in model.state_dict().values()
               if v.is_floating_point())


def _tool_error(tool: str, model: Path, tmp: Path, capsys, caplog) -> str:
    """Run one command in process on ``model``; assert it failed; return what it said."""
    if tool == 'seg-predict':
        image = tmp / 'frame.png'
        cv2.imwrite(str(image), np.zeros((32, 64, 3), np.uint8))
        rc = predict.main(['--model', str(model), '--device', 'cpu', '--output-dir',
                           str(tmp / 'pred'), str(image)])
    elif tool == 'seg-bag':
        write_bag(tmp / 'drive', 'mcap')
        rc = bag.main(['--model', str(model), '--input', str(tmp / 'drive'), '--output',
                       str(tmp / 'out'), '--topic', '/front/image_raw', '--device', 'cpu',
                       '--no-progress'])
    else:
        if tool == 'seg-eval':
            data = write_folder(tmp / 'data', n_train=1, n_val=2)
            argv = ['--model', str(model), '--dataset', 'folder', '--data-root', str(data),
                    '--device', 'cpu', '--workers', '0']
            entry = evaluate.main
        else:
            argv = ['--model', str(model), '--format', 'torchscript', '--output',
                    str(tmp / 'm.torchscript')]
            entry = export.main
        with pytest.raises(SystemExit) as e:
            entry(argv)
        rc = e.value.code
    assert rc, f'{tool} succeeded on {model}'
    out = capsys.readouterr()
    return f'{rc}\n{out.err}{out.out}{caplog.text}'


@pytest.mark.parametrize('tool', ['seg-predict', 'seg-bag', 'seg-eval', 'seg-export'])
@pytest.mark.parametrize('kind', ['nan', 'huge', 'provenance'])
def test_every_tool_refuses_at_load(bad_models, tmp_path, capsys, caplog, tool, kind):
    said = _tool_error(tool, bad_models[kind], tmp_path, capsys, caplog)
    for words in EXPECTED[kind]:
        assert words in said, said
    assert not list(tmp_path.glob('pred/*')) and not (tmp_path / 'out').exists()
    assert not (tmp_path / 'm.torchscript').exists()


def test_seg_train_refuses_a_nan_init_model(bad_models, tmp_path, capsys):
    data = write_folder(tmp_path / 'data', n_train=2, n_val=1, size=(64, 32))
    # Other class names than the source's: the head rows are matched by name, not checked
    # by shape alone.
    (data / 'classes.yaml').write_text((data / 'classes.yaml').read_text().replace(
        'name: road', 'name: street'))
    rc = train.main(['--dataset', 'folder', '--data-root', str(data), '--output-dir',
                     str(tmp_path / 'run'), '--init', str(bad_models['nan']), '--epochs', '1',
                     '--size', '64x32', '--workers', '0', '--no-plots'])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert NAN_TENSOR in err and INF_TENSOR in err, err
    assert not (tmp_path / 'run' / 'last.pt').exists()


def test_node_refuses_to_start(bad_models, tmp_path):
    procs = {kind: NodeProcess([f'model:={path}', 'device:=cpu'], tmp_path / f'{kind}.log')
             for kind, path in bad_models.items()}
    for kind, proc in procs.items():
        rc = proc.wait(timeout=90.0)
        log = proc.log()
        assert rc == 1, log
        for words in EXPECTED[kind]:
            assert words in log, log
        assert '[FATAL]' in log and 'Traceback' not in log, log


def test_bounds_leave_room_for_real_cameras():
    from seg_training.nets.checkpoint import check_input_bound

    check_input_bound(2048, 1024)
    check_input_bound(8192, 4096)
    with pytest.raises(ValueError, match='8193x8'):
        check_input_bound(8193, 8)
    with pytest.raises(ValueError, match='8192x4104'):
        check_input_bound(8192, 4104)
