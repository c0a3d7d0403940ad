"""Test-time augmentation: flip symmetry, scales, the single-run identity and option parsing."""

import numpy as np
import pytest
import torch

from seg_training.nets.model import ERFNet, ERFNetConfig
from seg_training.nets.tta import parse_tta, TTA, tta_probabilities


@pytest.fixture(scope='module')
def net():
    torch.manual_seed(0)
    return ERFNet(ERFNetConfig(num_classes=5)).eval()


@pytest.mark.parametrize('scales', [(1.0,), (0.75, 1.0, 1.5)])
def test_flip_averaged_output_is_flip_invariant(net, scales):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 32, 64)
    tta = TTA(scales, flip=True)
    with torch.inference_mode():
        a = tta_probabilities(net, x, tta)
        b = tta_probabilities(net, x.flip(-1), tta)
        plain = tta_probabilities(net, x, TTA(scales, flip=False))
    assert a.shape == (2, 5, 32, 64)
    torch.testing.assert_close(b, a.flip(-1), atol=1e-6, rtol=0)
    torch.testing.assert_close(a.sum(1), torch.ones(2, 32, 64), atol=1e-5, rtol=0)
    # without the flip the network (random weights) is not symmetric: the test can fail
    assert (plain.flip(-1) - tta_probabilities(net, x.flip(-1), TTA(scales, flip=False))
            ).abs().max() > 1e-3


def test_one_run_is_the_plain_softmax(net):
    x = torch.randn(1, 3, 32, 64)
    with torch.inference_mode():
        got = tta_probabilities(net, x, TTA((1.0,), flip=False))
        want = torch.softmax(net(x), dim=1)
    torch.testing.assert_close(got, want)


def test_parse_tta():
    assert parse_tta('flip') == TTA((1.0,), True)
    assert parse_tta('flip,0.75,1,1.25') == TTA((0.75, 1.0, 1.25), True)
    assert parse_tta('0.5,1').runs == 2 and parse_tta('flip,0.5,1').runs == 4
    with pytest.raises(ValueError, match='expected "flip"'):
        parse_tta('mirror')
    with pytest.raises(ValueError, match=r'\[0.25, 4\]'):
        parse_tta('flip,10')


def test_pipeline_with_flip_tta_labels_a_mirrored_frame_mirrored(tiny_model_file):
    from seg_perception.pipeline import Frame, Outputs, SegmentationPipeline

    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (64, 128, 3), dtype=np.uint8)
    pipe = SegmentationPipeline.from_file(tiny_model_file, device='cpu', warmup=False,
                                          label_upsampling='nearest', tta=TTA((1.0,), True))
    plain = SegmentationPipeline.from_file(tiny_model_file, device='cpu', warmup=False,
                                           label_upsampling='nearest')
    want = Outputs(labels=True, color=False, overlay=False, confidence=True)
    a, = pipe([Frame(img)], want)
    b, = pipe([Frame(np.ascontiguousarray(img[:, ::-1]))], want)
    np.testing.assert_array_equal(b.labels, a.labels[:, ::-1])
    np.testing.assert_allclose(b.confidence, a.confidence[:, ::-1], atol=1e-5)
    c, = plain([Frame(img)], want)
    d, = plain([Frame(np.ascontiguousarray(img[:, ::-1]))], want)
    assert (d.labels != c.labels[:, ::-1]).any()  # random weights: plain runs are not symmetric
    assert 0.0 < a.confidence.min() and a.confidence.max() <= 1.0


def test_seg_predict_and_seg_eval_take_tta(tmp_path, tiny_model_file, caplog):
    import logging

    from seg_perception.predict import main as seg_predict
    from seg_training.evaluation.seg_eval import evaluate_model_file, main as seg_eval
    from training_data import write_folder

    root = write_folder(tmp_path / 'data', n_train=1, n_val=2, size=(64, 32))
    out = tmp_path / 'pred'
    with caplog.at_level(logging.INFO):
        assert seg_predict(['--model', str(tiny_model_file), '--device', 'cpu', '--tta',
                            'flip,0.5,1', '--output-dir', str(out),
                            str(root / 'images' / 'val')]) == 0
    assert 'TTA scales 0.5,1 + flip' in caplog.text
    assert len(list(out.glob('*_labels.png'))) == 2
    common = dict(model_path=tiny_model_file, dataset='folder', data_root=root, device='cpu')
    with_tta = evaluate_model_file(**common, tta=parse_tta('flip'))
    plain = evaluate_model_file(**common)
    assert with_tta['tta'] == 'scales 1 + flip' and plain['tta'] is None
    assert with_tta['confusion_matrix'] != plain['confusion_matrix']
    net = evaluate_model_file(**common, eval_size='network', tta=parse_tta('flip,0.5,1'))
    assert net['tta'] == 'scales 0.5,1 + flip' and net['num_pixels'] > 0
    with pytest.raises(SystemExit):
        seg_eval(['--model', str(tiny_model_file), '--dataset', 'folder', '--data-root',
                  str(root), '--tta', 'mirror'])


def test_seg_predict_refuses_fp16_on_the_cpu(tmp_path, tiny_model_file, capsys):
    from seg_perception.predict import main as seg_predict

    with pytest.raises(SystemExit) as e:
        seg_predict(['--model', str(tiny_model_file), '--device', 'cpu', '--precision', 'fp16',
                     str(tmp_path)])
    assert e.value.code == 2
    assert '--precision fp16 needs CUDA' in capsys.readouterr().err
