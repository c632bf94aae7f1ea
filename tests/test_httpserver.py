"""The test server's routes behave as documented (checked with a plain ``requests`` client)."""
from __future__ import annotations

import threading
import time

import pytest
import requests
import urllib3

from datagen import IMAGES_DIR, jpeg_bytes, sign_rows
from httpserver import LocalHTTPServer

TIMEOUT = 10  # seconds; every request is bounded


@pytest.fixture(scope="module")
def server():
    with LocalHTTPServer(IMAGES_DIR, big_size=3 * 1024 * 1024 + 7) as srv:
        srv.add("a", jpeg_bytes(sign_rows(1).iloc[0, 1:].to_numpy()))
        yield srv


@pytest.fixture(scope="module")
def blob(server):
    return requests.get(server.url("/bytes/a"), timeout=TIMEOUT).content


def test_img_serves_every_shared_file_with_its_type(server):
    files = sorted(IMAGES_DIR.iterdir())
    assert len(files) == 52
    for path in files:
        r = requests.get(server.url(f"/img/{path.name}"), timeout=TIMEOUT)
        assert r.status_code == 200 and r.content == path.read_bytes()
        assert r.headers["Content-Type"].startswith("image/"), path.name


def test_img_missing_file_is_404(server):
    assert requests.get(server.url("/img/nope.jpg"), timeout=TIMEOUT).status_code == 404


def test_bytes_serves_registered_data_and_404_for_unknown_key(server, blob):
    assert blob[:2] == b"\xff\xd8"  # a JPEG
    assert requests.get(server.url("/bytes/unknown"), timeout=TIMEOUT).status_code == 404


def test_add_returns_the_bytes_url(server):
    url = server.add("added", b"hello")
    assert requests.get(url, timeout=TIMEOUT).content == b"hello"


def test_status_404(server):
    assert requests.get(server.url("/status/404"), timeout=TIMEOUT).status_code == 404


def test_flaky_fails_once_then_serves(server, blob):
    server.add("f", blob)
    first = requests.get(server.url("/flaky/f"), timeout=TIMEOUT)
    second = requests.get(server.url("/flaky/f"), timeout=TIMEOUT)
    assert (first.status_code, second.status_code) == (500, 200)
    assert second.content == blob
    assert server.hits("/flaky/f") == 2 and server.hits("flaky/f") == 2


def test_ratelimit_sends_429_with_retry_after_once(server, blob):
    server.add("r", blob)
    first = requests.get(server.url("/ratelimit/r"), timeout=TIMEOUT)
    assert first.status_code == 429 and first.headers["Retry-After"] == "1"
    second = requests.get(server.url("/ratelimit/r"), timeout=TIMEOUT)
    assert second.status_code == 200 and second.content == blob


def test_slow_exceeds_a_client_timeout(server):
    with pytest.raises(requests.ReadTimeout):
        requests.get(server.url("/slow/a"), timeout=(TIMEOUT, 0.2))


def test_stop_releases_a_pending_slow_request():
    srv = LocalHTTPServer(slow_seconds=300).start()
    srv.add("s", b"late")
    result = {}
    client = threading.Thread(target=lambda: result.update(r=requests.get(srv.url("/slow/s"), timeout=60)))
    client.start()
    deadline = time.monotonic() + TIMEOUT
    while srv.hits("/slow/s") == 0 and time.monotonic() < deadline:
        time.sleep(0.01)  # poll until the request has arrived
    srv.stop()
    client.join(timeout=TIMEOUT)
    assert not client.is_alive()
    assert result["r"].content == b"late"


def test_reset_drops_the_connection(server):
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url("/reset"), timeout=TIMEOUT)


def test_truncated_declares_full_length_but_sends_half(server, blob):
    server.add("t", blob)
    r = requests.get(server.url("/truncated/t"), stream=True, timeout=TIMEOUT)
    assert int(r.headers["Content-Length"]) == len(blob)
    assert r.raw.read(len(blob) // 2) == blob[: len(blob) // 2]
    with pytest.raises(urllib3.exceptions.ProtocolError, match="IncompleteRead"):
        r.raw.read()  # the server closed before the declared end


def test_nonimage_is_html(server):
    r = requests.get(server.url("/nonimage"), timeout=TIMEOUT)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    assert b"<html" in r.content


def test_big_streams_the_configured_size(server):
    r = requests.get(server.url("/big"), stream=True, timeout=TIMEOUT)
    assert int(r.headers["Content-Length"]) == 3 * 1024 * 1024 + 7
    assert sum(len(c) for c in r.iter_content(1 << 20)) == 3 * 1024 * 1024 + 7
    assert len(requests.get(server.url("/big?size=1000"), timeout=TIMEOUT).content) == 1000


def test_big_defaults_to_50_mb():
    assert LocalHTTPServer().big_size == 50 * 1024 * 1024


def test_redirect_goes_to_bytes(server, blob):
    r = requests.get(server.url("/redirect/a"), timeout=TIMEOUT)
    assert r.status_code == 200 and r.content == blob
    assert r.history[0].status_code == 302 and r.history[0].headers["Location"] == "/bytes/a"


def test_redirect_loop_never_ends(server):
    with pytest.raises(requests.TooManyRedirects):
        requests.get(server.url("/redirect-loop"), timeout=TIMEOUT)


def test_url_before_start_explains():
    with pytest.raises(RuntimeError, match="not started"):
        LocalHTTPServer().url("/bytes/a")
