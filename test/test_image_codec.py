"""Raw image buffers: every malformed case is refused by name; decoding never copies."""

from array import array

import numpy as np
import pytest

from seg_perception.image_codec import (channels, CONVERTED, decode, encode, ENCODINGS,
                                        ImageFormatError, overlay_encoding, RawImage)


def raw(encoding='rgb8', height=2, width=3, step=None, data=None) -> RawImage:
    c = {**ENCODINGS, **CONVERTED}.get(encoding, (3,))[0]
    step = width * c if step is None else step
    data = bytes(range(step * height)) if data is None else data
    return RawImage(encoding, height, width, step, data)


@pytest.mark.parametrize('encoding, c', [('rgb8', 3), ('bgr8', 3), ('rgba8', 4), ('bgra8', 4),
                                         ('mono8', 1), ('yuv422', 2), ('yuv422_yuy2', 2),
                                         ('bayer_rggb8', 1), ('bayer_bggr8', 1),
                                         ('bayer_gbrg8', 1), ('bayer_grbg8', 1)])
def test_decode_shapes_and_values(encoding, c):
    h, w = (4, 6) if encoding in CONVERTED else (3, 5)  # yuv422 and Bayer: even sizes
    pixels = np.random.default_rng(0).integers(0, 256, (h, w, c), dtype=np.uint8)
    img = decode(RawImage(encoding, h, w, w * c, pixels.tobytes()))
    assert img.shape == (h, w, c) and img.dtype == np.uint8
    np.testing.assert_array_equal(img, pixels)
    assert channels(encoding) == c


def test_decode_is_a_view_on_the_message_buffer():
    buf = bytearray(range(2 * 3 * 3))
    img = decode(RawImage('rgb8', 2, 3, 9, buf))
    assert np.shares_memory(img, np.frombuffer(buf, dtype=np.uint8))
    buf[4] = 200  # row 0, pixel 1, green
    assert img[0, 1, 1] == 200


def test_decode_array_data_without_copy():
    data = array('B', range(24))
    img = decode(RawImage('rgba8', 2, 3, 12, data))
    data[23] = 7
    assert img[1, 2, 3] == 7


def test_padded_rows_are_cropped_without_copy():
    h, w, step = 2, 3, 12  # 9 bytes of rgb8 and 3 bytes of padding per row
    buf = bytearray(b'\xff' * (step * h))
    for y in range(h):
        buf[y * step:y * step + 9] = bytes(range(y * 9, y * 9 + 9))
    img = decode(RawImage('rgb8', h, w, step, buf))
    np.testing.assert_array_equal(img.reshape(-1), np.arange(18))
    assert np.shares_memory(img, np.frombuffer(buf, dtype=np.uint8))


@pytest.mark.parametrize('image, field', [
    (raw(encoding='yuv420'), 'encoding'),
    (raw(encoding='bayer_rggb16'), 'encoding'),
    (raw(encoding='16UC1'), 'encoding'),
    (raw(encoding='yuv422', width=3), 'width 3 is odd; yuv422'),
    (raw(encoding='yuv422_yuy2', width=5), 'width 5 is odd; yuv422_yuy2'),
    (raw(encoding='bayer_grbg8', width=3), 'width 3 is odd; bayer_grbg8'),
    (raw(encoding='bayer_rggb8', height=3, width=4), 'height 3 is odd; bayer_rggb8'),
    (raw(encoding='yuv422', width=4, step=6), r'step 6 is smaller than one row \(4 px x 2'),
    (raw(encoding='bayer_bggr8', width=4, data=bytes(7)), 'data has 7 bytes'),
    (raw(height=0, data=b''), 'height=0'),
    (raw(width=0, step=0, data=b''), 'width=0'),
    (raw(step=8), 'step 8'),
    (raw(data=bytes(17)), 'data has 17 bytes'),
    (raw(data=bytes(19)), 'data has 19 bytes'),
    (raw(step=10, data=bytes(18)), 'step x height = 10 x 2'),
])
def test_malformed_images_name_the_field(image, field):
    with pytest.raises(ImageFormatError, match=field):
        decode(image)


def test_unknown_encoding_lists_the_supported_ones():
    with pytest.raises(ImageFormatError, match="'bayer_rggb16'.*rgb8, bgr8, rgba8, bgra8, mono8, "
                       "yuv422, yuv422_yuy2, bayer_rggb8, bayer_bggr8, bayer_gbrg8, bayer_grbg8"):
        channels('bayer_rggb16')


def test_overlay_encoding():
    assert [overlay_encoding(e) for e in ('rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8')] == [
        'rgb8', 'bgr8', 'rgba8', 'bgra8', 'rgb8']
    assert [overlay_encoding(e) for e in CONVERTED] == ['rgb8'] * 6
    with pytest.raises(ImageFormatError, match='encoding'):
        overlay_encoding('jpeg')


@pytest.mark.parametrize('shape, encoding', [((4, 6), 'mono8'), ((4, 6, 3), 'rgb8'),
                                             ((4, 6, 4), 'bgra8')])
def test_encode_decode_round_trip(shape, encoding):
    img = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    view = img[:, ::-1]  # not contiguous: encode packs the rows
    h, w, step, data = encode(view)
    assert (h, w, step) == (4, 6, 6 * (1 if len(shape) == 2 else shape[2]))
    assert isinstance(data, bytes) and len(data) == step * h
    back = decode(RawImage(encoding, h, w, step, data))
    np.testing.assert_array_equal(back.reshape(view.shape), view)


def test_encode_refuses_other_dtypes():
    with pytest.raises(ImageFormatError, match='uint8'):
        encode(np.zeros((2, 2), dtype=np.uint16))
