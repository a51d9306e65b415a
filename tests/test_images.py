"""Every kind of file users bring is either decoded to upright RGB or rejected with a reason."""

from __future__ import annotations

import http.server
import io
import socket
import threading

import pytest
from PIL import Image

from image_classification.images import decode_rgb, inspect_image, inspect_images, load_rgb
from image_classification.image_files import ImageLimits, ImageReadError, read_bytes

from .conftest import BAD_FILES, good_files, jpeg_bytes, noise_image, write_files

EXPECTED_REASON = {
    "zero_bytes.jpg": "empty file",
    "truncated.jpg": "corrupt or truncated",
    "truncated.png": "corrupt or truncated",
    "random_bytes.png": "not an image",
    "page.jpg": "not an image",
    "tiny.png": "too small",
    "sliver.png": "too small",
    "bomb.png": "pixel limit",
    "loop.jpg": "cannot be read",
    "dangling.jpg": "missing file",
}


@pytest.mark.parametrize("name", sorted(good_files()))
def test_every_accepted_mode_decodes_to_rgb(name):
    image, size = decode_rgb(good_files()[name])
    assert image.mode == "RGB"
    assert image.size == size


def test_exif_orientation_is_applied():
    image, size = decode_rgb(good_files()["exif_rotated.jpg"])
    assert image.size == (30, 60) and size == (30, 60)  # stored 60x30, viewed upright


def test_transparent_pixels_become_white_not_their_hidden_colour():
    image = Image.new("RGBA", (20, 20), (255, 0, 0, 0))  # fully transparent red
    from .conftest import png_bytes

    rgb, _ = decode_rgb(png_bytes(image))
    assert rgb.getpixel((5, 5)) == (255, 255, 255)


def test_sixteen_bit_range_is_scaled_not_clipped():
    rgb, _ = decode_rgb(good_files()["sixteen_bit.png"])
    low, high = rgb.convert("L").getextrema()
    assert low == 0 and high == 255


@pytest.mark.parametrize("name", sorted(EXPECTED_REASON))
def test_bad_files_are_rejected_with_a_reason(bad_image_folder, name):
    row = inspect_image(str(bad_image_folder / name), ImageLimits(min_side=16))
    assert not row["ok"]
    assert EXPECTED_REASON[name] in row["reason"]


def test_bomb_is_refused_before_decoding():
    with pytest.raises(ImageReadError, match="pixel limit"):
        decode_rgb(BAD_FILES["bomb.png"](), ImageLimits(max_pixels=10_000_000))


def test_draft_mode_decodes_large_jpeg_smaller_but_reports_full_size():
    data = jpeg_bytes(noise_image(0, size=(1600, 1200)))
    image, size = decode_rgb(data, draft_size=224)
    assert size == (1600, 1200)
    assert 224 <= min(image.size) < 600


def test_inspect_images_keeps_going_past_bad_files(tmp_path, bad_image_folder):
    good = write_files(tmp_path / "good", good_files())
    paths = [str(p) for p in good] + [str(bad_image_folder / n) for n in EXPECTED_REASON]
    report = inspect_images(paths, ImageLimits(min_side=16), workers=2)
    assert list(report["path"]) == paths
    assert report["ok"].sum() == len(good)
    assert report.loc[report["ok"], "sha256"].str.len().eq(64).all()
    assert report.loc[report["ok"], "phash"].str.len().eq(16).all()
    assert (report.loc[~report["ok"], "reason"] != "").all()


def test_load_rgb_raises_a_readable_error(tmp_path):
    with pytest.raises(ImageReadError, match="missing file"):
        load_rgb(str(tmp_path / "nope.jpg"))


def test_limits_are_validated():
    with pytest.raises(ValueError, match="min_side"):
        ImageLimits(min_side=0)


def test_max_pixels_above_pillows_own_limit_takes_effect(monkeypatch):
    """Pillow refuses images over twice its MAX_IMAGE_PIXELS (~179 M) when it opens them: a user who
    raises max_pixels past that gets the image; below it, the refusal names the parameter."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    buffer = io.BytesIO()
    Image.new("1", (13_500, 13_500)).save(buffer, format="PNG")  # 182 M pixels in ~25 KB
    image, size = decode_rgb(buffer.getvalue(), ImageLimits(max_pixels=200_000_000), keep_gray=True)
    assert size == (13_500, 13_500) and image.size == size
    with pytest.raises(ImageReadError, match=r"pixel limit of 50,000,000 .*data_prep.image_checks.max_pixels"):
        decode_rgb(buffer.getvalue(), ImageLimits(max_pixels=50_000_000))


@pytest.fixture(scope="module")
def web_server():
    """A local HTTP server: 200 for /good.png, 404 for what it lacks, 500 for /broken.png."""
    picture = BAD_FILES["tiny.png"]()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the standard library's name
            status = {"/good.png": 200, "/broken.png": 500}.get(self.path, 404)
            self.send_response(status)
            self.send_header("Content-Length", str(len(picture) if status == 200 else 0))
            self.end_headers()
            if status == 200:
                self.wfile.write(picture)

        do_HEAD = do_GET  # noqa: N815

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_a_remote_file_that_is_gone_unreachable_or_failing_says_which(web_server):
    """fsspec reports all three as 'not found': only a 404 is a missing file."""
    assert read_bytes(f"{web_server}/good.png") == BAD_FILES["tiny.png"]()
    with pytest.raises(ImageReadError, match="missing file"):
        read_bytes(f"{web_server}/gone.png")
    with pytest.raises(ImageReadError, match="the server answered HTTP 500"):
        read_bytes(f"{web_server}/broken.png")
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    with pytest.raises(ImageReadError, match="cannot be reached: Cannot connect to host"):
        read_bytes(f"http://127.0.0.1:{closed}/a.png")
