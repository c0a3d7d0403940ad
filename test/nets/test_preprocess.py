"""One network-input step: stored in the model file, run by the node, seg-eval and seg-train."""

import cv2
import numpy as np
from PIL import Image
import pytest
import torch

from seg_perception.pipeline import SegmentationPipeline
from seg_training.base.classes import CUSTOM8
from seg_training.datasets.transforms import val_transform
from seg_training.nets.checkpoint import (build_model, load_model, model_file_dict, ModelFileError,
                                          ModelInfo, Normalization, save_model)
from seg_training.nets.preprocess import DEFAULT_RESIZE, OFFICIAL_RESIZE, preprocessing, Resize


def smooth(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Make an (H, W, 3) uint8 RGB image with structure at several scales."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


def as_tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float()  # (1, 3, H, W)


def as_image(t: torch.Tensor) -> np.ndarray:
    return t[0].permute(1, 2, 0).numpy()  # (H, W, 3)


@pytest.mark.parametrize('size', [(100, 40), (75, 40), (150, 80)])
def test_area_is_opencv_area_for_integer_factors(size):
    rgb = smooth(300, 160)
    ours = as_image(Resize('area').apply(as_tensor(rgb), size))
    ref = cv2.resize(rgb.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(ours, ref, atol=1e-3)


def test_area_enlarges_bilinearly_and_keeps_the_network_size():
    rgb = smooth(40, 20)
    t = as_tensor(rgb)
    up = Resize('area').apply(t, (80, 40))
    assert torch.equal(up, Resize('bilinear', False).apply(t, (80, 40)))
    assert Resize('area').apply(t, (40, 20)) is t  # no resize at the network size


def test_bilinear_antialias_is_pil_bilinear_up_to_8_bit_rounding():
    rgb = smooth(300, 160)
    for size in [(100, 40), (64, 32), (128, 96)]:
        ours = as_image(OFFICIAL_RESIZE.apply(as_tensor(rgb), size))
        pil = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR), np.float32)
        assert np.abs(ours - pil).max() < 1.0, size
    plain = as_image(Resize('bilinear', False).apply(as_tensor(rgb), (64, 32)))
    pil = np.asarray(Image.fromarray(rgb).resize((64, 32), Image.BILINEAR), np.float32)
    assert np.abs(plain - pil).max() > 5.0  # without antialias it is another filter


def test_resize_settings_are_checked():
    with pytest.raises(ValueError, match='nearest'):
        Resize('nearest')
    with pytest.raises(ValueError, match='antialias'):
        Resize('bilinear', 'yes')
    with pytest.raises(ValueError, match='unknown fields'):
        Resize.from_dict({'resize': 'area', 'interpolation': 'cubic'})


def _info(resize=DEFAULT_RESIZE):
    return ModelInfo(classes=CUSTOM8, input_size=(64, 32),
                     normalization=Normalization((0.5, 0.4, 0.3), (0.2, 0.25, 0.3)),
                     resize=resize)


def test_model_file_stores_the_resize_and_older_files_get_the_documented_default(tmp_path):
    torch.manual_seed(0)
    info = _info(Resize('bilinear', True))
    model = build_model(info)
    save_model(model, info, tmp_path / 'new.pt')
    assert load_model(tmp_path / 'new.pt')[1].resize == Resize('bilinear', True)
    old = model_file_dict(model, info)
    del old['preprocess']  # as written before the entry existed
    torch.save(old, tmp_path / 'old.pt')
    assert load_model(tmp_path / 'old.pt')[1].resize == Resize('area', False)
    old['preprocess'] = {'resize': 'lanczos', 'antialias': True}
    torch.save(old, tmp_path / 'bad.pt')
    with pytest.raises(ModelFileError, match=r'bad\.pt.*lanczos'):
        load_model(tmp_path / 'bad.pt')


def test_official_erfnet_gets_pil_bilinear(tmp_path):
    from seg_training.nets.model import ERFNet, ERFNetConfig

    net = ERFNet(ERFNetConfig(num_classes=20))
    torch.save({f'module.{k}': v for k, v in net.state_dict().items()},
               tmp_path / 'erfnet_pretrained.pth')
    info = load_model(tmp_path / 'erfnet_pretrained.pth')[1]
    assert info.resize == OFFICIAL_RESIZE == Resize('bilinear', True)
    # and it says where it comes from: real Cityscapes frames
    from seg_training.nets.provenance import describe, never_saw_real_images

    assert info.provenance['real_images'] is True and not never_saw_real_images(info.provenance)
    assert 'cityscapes:train (real, 2975 images, 2048x1024)' in describe(info.provenance)
    assert 'github.com/Eromera/erfnet_pytorch' in describe(info.provenance)


@pytest.mark.parametrize('resize', [Resize('area'), Resize('bilinear', True)], ids=str)
@pytest.mark.parametrize('image_size', [(160, 80), (100, 70), (48, 24)])
def test_pipeline_and_validation_transform_run_the_same_step(resize, image_size):
    info = _info(resize)
    pipe = SegmentationPipeline(build_model(info), info, device='cpu', warmup=False)
    rgb = smooth(*image_size, seed=image_size[0])
    node_input = pipe._network_input(as_tensor(rgb))  # (1, 3, 32, 64)
    mask = np.zeros(rgb.shape[:2], np.uint8)
    x, y = val_transform((64, 32), info.normalization.mean, info.normalization.std, resize)(
        rgb, mask)
    assert torch.equal(node_input[0], x)
    assert y.shape == (32, 64)
    direct = preprocessing((64, 32), info.normalization.mean, info.normalization.std, resize)
    assert torch.equal(direct.image(rgb), x)
