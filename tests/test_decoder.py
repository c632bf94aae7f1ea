"""worker/decoder.py on the 52 real Pillow test images and on generated edge cases."""
from __future__ import annotations

import io
import struct

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from datagen import IMAGES_DIR, jpeg_bytes, png_bytes, sign_rows
from signq.settings import ImageSpec
from worker import decoder
from worker.decoder import decode, fit
from worker.records import REASONS, BadRecord

GRAY = ImageSpec()
RGB = ImageSpec(channels=3)

# What each file must become. "ok" = a 28x28 image (the cleaner may still drop it as blank).
OUTCOMES = {
    "1_trns.png": "ok",
    "app13-multiple.jpg": "ok",
    "broken.png": "undecodable",                     # neither OpenCV nor Pillow identifies it
    "broken_data_stream.png": "undecodable",         # damaged IDAT stream: both decoders refuse it
    "decompression_bomb.gif": "decompression_bomb",  # 44 bytes claiming 4.36 Gpixel, refused at the header
    "empty_gps_ifd.jpg": "ok",
    "exif-72dpi-int.jpg": "ok",
    "exif_imagemagick_orientation.png": "ok",
    "flower.jpg": "ok",
    "flower2.jpg": "ok",
    "hopper.bmp": "ok",
    "hopper.gif": "ok",
    "hopper.jpg": "ok",
    "hopper.png": "ok",
    "hopper.ppm": "ok",
    "hopper.tif": "ok",
    "hopper.webp": "ok",
    "hopper_16bit_qtables.jpg": "ok",
    "hopper_bad_exif.jpg": "ok",
    "hopper_gray.jpg": "ok",
    "hopper_idat_after_image_end.png": "ok",
    "hopper_orientation_2.jpg": "ok",
    "hopper_orientation_3.jpg": "ok",
    "hopper_orientation_4.jpg": "ok",
    "hopper_orientation_5.jpg": "ok",
    "hopper_orientation_6.jpg": "ok",
    "hopper_orientation_7.jpg": "ok",
    "hopper_orientation_8.jpg": "ok",
    "i_trns.png": "ok",                              # 16-bit values 0..255: all 0 in 8 bits (blank later)
    "icc_profile_big.jpg": "ok",
    "invalid-exif.jpg": "ok",
    "iptc.jpg": "ok",
    "jfif_unit_cm.jpg": "ok",                        # 1x1 black (blank later)
    "junk_jpeg_header.jpg": "ok",
    "l_trns.png": "ok",
    "orientation_rectangle.jpg": "ok",
    "p_trns_single.png": "ok",
    "pil123p.png": "ok",
    "pil123rgba.png": "ok",
    "pil_sample_cmyk.jpg": "ok",
    "pil_sample_rgb.jpg": "ok",
    "png_decompression_dos.png": "ok",               # zTXt bomb that libpng bounds and skips; 1x1 black (blank later)
    "rgb_trns.png": "ok",
    "sugarshack_bad_mpo_header.jpg": "ok",
    "test-card.png": "ok",
    "transparent.png": "ok",
    "truncated_end_chunk.png": "truncated",          # IDAT cut short, no IEND
    "truncated_image.png": "truncated",
    "truncated_jpeg.jpg": "truncated",
    "uncompressed_la.png": "ok",
    "unknown_compression_method.png": "ok",          # only its iCCP chunk is bad; the pixels decode
    "xmp_test.jpg": "ok",
}


def read(name: str) -> bytes:
    return (IMAGES_DIR / name).read_bytes()


def outcome(data: bytes, spec: ImageSpec) -> str:
    try:
        img = decode(data, spec)
    except BadRecord as e:
        assert e.reason in REASONS, e.reason
        return e.reason
    assert img.shape == spec.shape and img.dtype == np.uint8
    return "ok"


def test_table_covers_every_shared_image():
    assert sorted(OUTCOMES) == sorted(p.name for p in IMAGES_DIR.iterdir())


@pytest.mark.parametrize("spec", [GRAY, RGB], ids=["gray", "rgb"])
def test_every_shared_image_has_its_outcome(spec):
    got = {name: outcome(read(name), spec) for name in OUTCOMES}
    assert got == OUTCOMES


@pytest.mark.parametrize("k", range(2, 9))
def test_exif_orientation_jpeg_matches_upright_reference(k):
    for spec in (GRAY, RGB):
        ref = decode(read("hopper.jpg"), spec).astype(int)
        img = decode(read(f"hopper_orientation_{k}.jpg"), spec).astype(int)
        assert np.abs(img - ref).mean() < 3
        assert np.abs(np.rot90(ref, 2) - ref).mean() > 30   # the check can tell a rotation apart


def test_exif_orientation_inside_png_is_applied():
    data = read("exif_imagemagick_orientation.png")
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("L")
    stored = Image.open(io.BytesIO(data)).convert("L")
    img = decode(data, GRAY).astype(int)
    assert np.abs(img - fit(np.asarray(upright), GRAY).astype(int)).mean() < 1
    assert np.abs(img - fit(np.asarray(stored), GRAY).astype(int)).mean() > 4


def test_orientation_swaps_width_and_height():
    tall = ImageSpec(height=2, width=1, channels=3)   # orientation 8 turns the 2x1 picture into 1x2
    ref = np.asarray(ImageOps.exif_transpose(Image.open(IMAGES_DIR / "orientation_rectangle.jpg")).convert("RGB"))
    assert ref.shape == (2, 1, 3)
    assert np.abs(decode(read("orientation_rectangle.jpg"), tall).astype(int) - ref).max() < 8


@pytest.mark.parametrize("spec", [GRAY, RGB], ids=["gray", "rgb"])
def test_cmyk_jpeg_close_to_its_rgb_twin(spec):
    cmyk = decode(read("pil_sample_cmyk.jpg"), spec).astype(int)
    rgb = decode(read("pil_sample_rgb.jpg"), spec).astype(int)
    assert np.abs(cmyk - rgb).mean() < 8


def test_16bit_png_scales_to_8_bits():
    gray = sign_rows(1).iloc[0, 1:].to_numpy(np.uint8).reshape(28, 28)
    ok, buf = cv2.imencode(".png", gray.astype(np.uint16) * 257)
    assert ok and Image.open(io.BytesIO(buf.tobytes())).mode.startswith("I")
    np.testing.assert_array_equal(decode(buf.tobytes(), GRAY)[..., 0], gray)


def test_16bit_pillow_fallback_agrees_with_opencv():
    data = read("i_trns.png")   # 16-bit grey, values 0..255 of 65535: near black either way
    np.testing.assert_array_equal(decoder._decode_pillow(data, GRAY), decoder._decode_cv2(data, 1))


def test_rgba_png_drops_alpha():
    rgb = np.dstack([np.full((28, 28), v, np.uint8) for v in (200, 100, 50)])
    rgba = np.dstack([rgb[..., ::-1], np.full((28, 28), 128, np.uint8)])   # BGRA for OpenCV
    ok, buf = cv2.imencode(".png", rgba)
    assert ok and Image.open(io.BytesIO(buf.tobytes())).mode == "RGBA"
    np.testing.assert_array_equal(decode(buf.tobytes(), RGB), rgb)
    for name in ("transparent.png", "pil123rgba.png", "uncompressed_la.png"):
        assert decode(read(name), RGB).shape == (28, 28, 3)


def test_generated_sign_images_round_trip():
    pixels = sign_rows(1).iloc[0, 1:].to_numpy(np.uint8).reshape(28, 28, 1)
    np.testing.assert_array_equal(decode(png_bytes(pixels), GRAY), pixels)
    assert np.abs(decode(jpeg_bytes(pixels), GRAY).astype(int) - pixels).mean() < 3
    assert decode(png_bytes(pixels), RGB).shape == (28, 28, 3)


def test_channels_3_gives_rgb_in_rgb_order():
    img = decode(read("hopper.png"), RGB)
    ref = fit(np.asarray(Image.open(IMAGES_DIR / "hopper.png").convert("RGB")), RGB)
    assert img.shape == (28, 28, 3)
    assert np.abs(img.astype(int) - ref).mean() < 2


def test_non_image_and_empty():
    with pytest.raises(BadRecord) as e:
        decode(b"<!doctype html><html>not an image</html>", GRAY)
    assert e.value.reason == "not_image"
    with pytest.raises(BadRecord) as e:
        decode(b"", GRAY)
    assert e.value.reason == "empty"


@pytest.mark.parametrize("name", ["hopper.jpg", "hopper.png", "hopper.gif", "hopper.webp", "hopper.bmp"])
def test_pixel_limit(name):
    data = read(name)                                   # 128x128 = 16,384 pixels
    assert outcome(data, ImageSpec(max_pixels=16_384)) == "ok"
    assert outcome(data, ImageSpec(max_pixels=10_000)) == "too_large"
    assert outcome(data, ImageSpec(max_pixels=1_000)) == "decompression_bomb"


def test_pixel_limit_leaves_pillow_global_alone():
    before = Image.MAX_IMAGE_PIXELS
    outcome(read("hopper.gif"), ImageSpec(max_pixels=1_000))
    outcome(read("truncated_jpeg.jpg"), ImageSpec(max_pixels=1_000))
    assert Image.MAX_IMAGE_PIXELS == before


def test_oversized_png_header_is_refused_before_decoding():
    data = bytearray(read("hopper.png"))
    data[16:24] = struct.pack(">II", 100_000, 100_000)   # 10 Gpixel claimed by a 30 kB file
    with pytest.raises(BadRecord) as e:
        decode(bytes(data), GRAY)
    assert e.value.reason == "decompression_bomb" and "100000x100000" in e.value.detail


def test_jpeg_header_size_matches_pillow():
    for name in OUTCOMES:
        data = read(name)
        if decoder.sniff(data) == "jpeg":
            assert decoder.header_size(data, "jpeg") == Image.open(io.BytesIO(data)).size, name


def test_a_header_cut_short_is_a_reject_not_a_crash():
    with pytest.raises(BadRecord):
        decode(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", ImageSpec())
