"""Image buffers: every malformed case is refused by name; raw decoding never copies."""

from array import array
import struct
import time

from big_images import jpeg_declaring, zero_png
import cv2
import numpy as np
import pytest

from seg_perception.image_codec import (channels, check_compressed, check_pixels,
                                        compressed_codec, compressed_size, CONVERTED, decode,
                                        decode_compressed, encode, ENCODINGS, field_repr,
                                        ImageFormatError, MAX_INPUT_PIXELS, overlay_encoding,
                                        RawImage)


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


# --- compressed frames: signatures, sizes from the header, bounds ---------------------------

def _encoded(ext, shape=(30, 50, 3), params=()):
    pixels = np.random.default_rng(2).integers(0, 256, shape, dtype=np.uint8)
    ok, buf = cv2.imencode(ext, pixels, list(params))
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize('ext,params,shape', [
    ('.png', (), (30, 50, 3)), ('.png', (), (7, 3)), ('.jpg', (), (30, 50, 3)),
    ('.jpg', (cv2.IMWRITE_JPEG_PROGRESSIVE, 1), (33, 17, 3)), ('.jpg', (), (12, 640))])
def test_size_is_read_from_the_header_as_decoded(ext, params, shape):
    data = _encoded(ext, shape, params)
    codec = 'png' if ext == '.png' else 'jpeg'
    assert compressed_size(codec, data) == (shape[1], shape[0])
    assert check_compressed(codec, data) == (codec, shape[1], shape[0])
    image, _ = decode_compressed(codec, data)
    assert image.shape[:2] == shape[:2]


def test_jpeg_size_is_found_after_large_segments():
    data = _encoded('.jpg', (20, 40, 3))
    app1 = b'\xff\xe1' + struct.pack('>H', 60002) + b'Exif\0\0' + bytes(59994)  # (H, W)
    comment = b'\xff\xfe\x00\x05abc'
    data = data[:2] + app1 + comment + data[2:]
    assert compressed_size('jpeg', data) == (40, 20)
    assert decode_compressed('jpeg', data)[0].shape == (20, 40, 3)


def test_30000x30000_png_is_refused_from_its_header_before_decoding():
    data = zero_png(30000, 30000)
    assert len(data) < 1_000_000
    t0 = time.perf_counter()
    with pytest.raises(ImageFormatError, match=r'png of 30000x30000 = 900000000 pixels is over '
                       r'max_input_pixels 16777216') as info:
        decode_compressed('png', data)
    assert time.perf_counter() - t0 < 1.0  # nothing was decoded
    assert info.value.kind == 'png too large'
    assert MAX_INPUT_PIXELS == 4096 * 4096


def test_limit_is_inclusive_and_configurable():
    data = zero_png(400, 300)
    assert decode_compressed('png', data, max_pixels=400 * 300)[0].shape == (300, 400, 1)
    with pytest.raises(ImageFormatError, match='400x300 = 120000 pixels'):
        decode_compressed('png', data, max_pixels=400 * 300 - 1)
    with pytest.raises(ImageFormatError, match='jpeg of 8000x8000 = 64000000 pixels'):
        decode_compressed('rgb8; jpeg compressed bgr8', jpeg_declaring(8000, 8000))
    with pytest.raises(ImageFormatError, match='image of 5000x4000'):
        check_pixels(5000, 4000, MAX_INPUT_PIXELS)
    check_pixels(4096, 4096, MAX_INPUT_PIXELS)


@pytest.mark.parametrize('ext,name', [('.bmp', 'bmp'), ('.tiff', 'tiff'), ('.webp', 'webp'),
                                      ('.png', 'png')])
def test_other_formats_labelled_jpeg_are_refused(ext, name):
    data = _encoded(ext)
    with pytest.raises(ImageFormatError, match=f"format 'jpeg' says jpeg but the data is {name}"):
        check_compressed('jpeg', data)
    with pytest.raises(ImageFormatError, match=f'says jpeg but the data is {name}'):
        decode_compressed('rgb8; jpeg compressed bgr8', data)


def test_data_without_the_declared_signature_is_refused():
    for fmt, data in (('jpeg', b'\x00\x01garbage bytes'), ('png', b'\xff\xd9\x00'),
                      ('jpeg', b'')):
        with pytest.raises(ImageFormatError, match=f'says {fmt}'):
            compressed_codec(fmt, data)
    with pytest.raises(ImageFormatError, match='says png but the data is gif'):
        compressed_codec('png', b'GIF89a' + bytes(10))
    with pytest.raises(ImageFormatError, match='jpeg signature .first bytes: 00 01 67 61'):
        compressed_codec('jpeg', b'\x00\x01garbage bytes')
    assert compressed_codec('', _encoded('.jpg')) == 'jpeg'
    with pytest.raises(ImageFormatError, match='neither jpeg nor png'):
        compressed_codec('', _encoded('.bmp'))


@pytest.mark.parametrize('data,words', [
    (b'\xff\xd8\xff\xe0\x00\x10JFIF', 'does not decode as jpeg: no frame header'),
    (b'\xff\xd8\xff\xda\x00\x08' + bytes(20), 'does not decode as jpeg: no frame header'),
    (b'\xff\xd8' + b'\xff\xfe\x00\x02' * 5000, 'does not decode as jpeg: no frame header'),
    (b'\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDX' + bytes(13), 'does not decode as png'),
    (b'\x89PNG\r\n\x1a\n', 'does not decode as png'),
])
def test_missing_or_broken_headers_are_refused(data, words):
    with pytest.raises(ImageFormatError, match=words):
        check_compressed('png' if data.startswith(b'\x89') else 'jpeg', data)


def test_empty_image_in_the_header_is_refused():
    with pytest.raises(ImageFormatError, match='declares an empty image: 24x0'):
        check_compressed('jpeg', jpeg_declaring(24, 0))


def test_fault_kind_ignores_values_but_not_the_fault():
    sizes = {ImageFormatError(f'data has {n} bytes, step x height = 9 x 2 = 18').kind
             for n in (3, 17, 5000)}
    assert len(sizes) == 1
    encodings = {ImageFormatError(f'unsupported encoding {e!r}').kind
                 for e in ('yuv9', 'x' * 1000, 'it\'s')}
    assert len(encodings) == 1
    short = pytest.raises(ImageFormatError, decode, raw(data=bytes(17)))
    long = pytest.raises(ImageFormatError, decode, raw(data=bytes(19)))
    assert short.value.kind != long.value.kind
    zero_h = pytest.raises(ImageFormatError, decode, raw(height=0, data=b''))
    zero_both = pytest.raises(ImageFormatError, decode, raw(height=0, width=0, step=0, data=b''))
    assert zero_h.value.kind != zero_both.value.kind
    assert ImageFormatError('x', kind='mine').kind == 'mine'


def test_long_field_values_are_shortened_in_messages():
    encoding = 'y' * 100_000
    with pytest.raises(ImageFormatError) as info:
        channels(encoding)
    message = str(info.value)
    assert len(message) < 300 and '(100000 characters)' in message
    with pytest.raises(ImageFormatError) as info:
        compressed_codec('f' * 50_000, b'')
    assert len(str(info.value)) < 200 and '(50000 characters)' in str(info.value)
    assert field_repr('rgb8') == "'rgb8'"
