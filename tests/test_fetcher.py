"""worker/fetcher.py against the real local HTTP server (tests/httpserver.py), plus its pure helpers."""
from __future__ import annotations

import gzip
import random
from dataclasses import replace
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone

import pytest
from aiohttp import web

from datagen import IMAGES_DIR, jpeg_bytes, png_bytes, sign_rows
from httpserver import LocalHTTPServer
from signq.settings import FetchSettings
from worker.fetcher import NetworkPolicy, backoff, check_url, fetch_all, parse_retry_after
from worker.records import BadRecord

FS = FetchSettings(read_timeout=1, connect_timeout=1, retries=2, backoff_base=0.05, backoff_cap=2,
                   max_body_bytes=1 << 20)


def run(urls, fs=FS):
    bodies, calls = {}, []

    def handle(batch):
        calls.append(len(batch))
        bodies.update(batch)

    failures = fetch_all(urls, fs, handle)
    assert set(bodies).isdisjoint(failures) and set(bodies) | set(failures) == set(range(len(urls)))
    return bodies, {i: (e.reason, e.detail) for i, e in failures.items()}


@pytest.fixture(scope="module")
def blobs(http_server):
    px = sign_rows(2).to_numpy()[:, 1:]
    return {"jpeg": jpeg_bytes(px[0]), "png": png_bytes(px[1])}


def test_images_are_fetched(http_server, blobs):
    jpeg_url = http_server.add("ok-jpeg", blobs["jpeg"])
    png_url = http_server.add("ok-png", blobs["png"])
    bodies, failures = run([jpeg_url, png_url, http_server.url("/img/hopper.jpg"), http_server.url("/nonimage")])
    assert failures == {}
    assert bodies[0] == blobs["jpeg"] and bodies[1] == blobs["png"]
    assert bodies[2] == (IMAGES_DIR / "hopper.jpg").read_bytes()
    assert bodies[3].startswith(b"<!doctype html>")      # fetched fine; the decoder rejects it as not_image


class EncodingServer(LocalHTTPServer):
    """The shared server plus bodies whose size the Content-Length header does not tell."""

    def _app(self):
        app = super()._app()
        app.router.add_get("/gzip/{size}", self._gzip)
        app.router.add_get("/chunked/{size}", self._chunked)
        return app

    async def _gzip(self, request):
        body = gzip.compress(b"\0" * int(request.match_info["size"]))
        return web.Response(body=body, headers={"Content-Encoding": "gzip", "Content-Type": "image/png"})

    async def _chunked(self, request):
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for _ in range(int(request.match_info["size"]) // 4096):
            await resp.write(b"\xff" * 4096)
        return resp


def test_body_cap_counts_decoded_bytes():
    with EncodingServer() as srv:
        small, bomb = srv.url("/gzip/4096"), srv.url(f"/gzip/{64 << 20}")     # the bomb is ~65 kB on the wire
        chunked_ok, chunked_big = srv.url("/chunked/8192"), srv.url(f"/chunked/{2 << 20}")
        bodies, failures = run([small, bomb, chunked_ok, chunked_big])
    assert bodies[0] == b"\0" * 4096 and bodies[2] == b"\xff" * 8192
    assert failures == {1: ("too_large", f"body exceeds cap {1 << 20} bytes"),
                        3: ("too_large", f"body exceeds cap {1 << 20} bytes")}


def test_404_is_not_retried(http_server):
    _, failures = run([http_server.url("/status/404")])
    assert failures[0] == ("http_status", "HTTP 404")
    assert http_server.hits("/status/404") == 1


def test_500_is_retried_then_reported(http_server):
    _, failures = run([http_server.url("/status/503")])
    assert failures[0][0] == "http_status" and "after 3 attempts" in failures[0][1]
    assert http_server.hits("/status/503") == 3


def test_flaky_succeeds_on_second_attempt(http_server, blobs):
    http_server.add("flaky-1", blobs["jpeg"])
    bodies, failures = run([http_server.url("/flaky/flaky-1")])
    assert failures == {} and bodies[0] == blobs["jpeg"]
    assert http_server.hits("/flaky/flaky-1") == 2


def test_rate_limit_honours_retry_after(http_server, blobs):
    http_server.add("rl-1", blobs["png"])
    bodies, failures = run([http_server.url("/ratelimit/rl-1")])
    assert failures == {} and bodies[0] == blobs["png"]
    assert http_server.hits("/ratelimit/rl-1") == 2


def test_broken_transfers(http_server, blobs):
    http_server.add("slow-1", blobs["jpeg"])
    http_server.add("trunc-1", blobs["jpeg"] * 4)
    urls = [http_server.url("/slow/slow-1"), http_server.url("/reset"), http_server.url("/truncated/trunc-1"),
            http_server.url("/big"), http_server.url("/redirect-loop")]
    _, failures = run(urls)
    assert {i: reason for i, (reason, _) in failures.items()} == {
        0: "timeout", 1: "connection", 2: "connection", 3: "too_large", 4: "redirect"}
    assert "after 3 attempts" in failures[0][1] and http_server.hits("/slow/slow-1") == 3
    assert http_server.hits("/big") == 1                  # refused from Content-Length, not retried
    assert http_server.hits("/redirect-loop") == 6        # the first request and 5 redirects


def test_redirect_is_followed(http_server, blobs):
    http_server.add("redir-1", blobs["png"])
    bodies, failures = run([http_server.url("/redirect/redir-1")])
    assert failures == {} and bodies[0] == blobs["png"]
    assert http_server.hits("/bytes/redir-1") == 1


def test_bad_urls_are_refused_without_connecting(http_server):
    urls = ["ftp://127.0.0.1/a.jpg", "file:///etc/passwd", "http://169.254.169.254/latest/meta-data/",
            "http://[::ffff:169.254.169.254]/", "not a url", None, "http:///nohost"]
    _, failures = run(urls)
    assert {i: reason for i, (reason, _) in failures.items()} == {
        0: "url_invalid", 1: "url_invalid", 2: "url_forbidden", 3: "url_forbidden", 4: "url_invalid",
        5: "url_invalid", 6: "url_invalid"}


def test_obfuscated_metadata_addresses_are_refused():
    # all spell 169.254.169.254: yarl refuses the non-canonical forms, the guarded resolver the rest
    urls = ["http://2852039166/latest/meta-data/", "http://0xa9fea9fe/", "http://169.254.43518/"]
    _, failures = run(urls)
    assert {reason for reason, _ in failures.values()} <= {"url_invalid", "url_forbidden"} and len(failures) == 3


def test_hostname_resolving_to_denied_network_is_forbidden(http_server, blobs):
    url = http_server.add("policy-1", blobs["jpeg"]).replace("127.0.0.1", "localhost")
    deny_loopback = replace(FS, deny_networks=("127.0.0.0/8", "::1/128"))
    only_private = replace(FS, allow_networks=("10.0.0.0/8",))
    for fs in (deny_loopback, only_private):
        _, failures = run([url], fs)
        assert failures[0][0] == "url_forbidden"
    assert http_server.hits("/bytes/policy-1") == 0
    bodies, failures = run([url], replace(FS, allow_networks=("127.0.0.0/8", "::1/128")))
    assert failures == {} and bodies[0] == blobs["jpeg"]


def test_redirect_to_forbidden_address_is_refused(http_server):
    policy = NetworkPolicy(deny=("127.0.0.0/8",))
    with pytest.raises(BadRecord) as e:
        check_url(http_server.url("/img/hopper.jpg"), policy)
    assert e.value.reason == "url_forbidden"


def test_network_policy():
    policy = NetworkPolicy(deny=FetchSettings.deny_networks)
    assert not policy.allowed("169.254.169.254") and not policy.allowed("::ffff:169.254.169.254")
    assert not policy.allowed("fd00:ec2::254") and policy.allowed("93.184.216.34") and policy.allowed("::1")
    only = NetworkPolicy(deny=("10.1.0.0/16",), allow=("10.0.0.0/8",))
    assert only.allowed("10.2.3.4") and not only.allowed("10.1.2.3") and not only.allowed("8.8.8.8")


def test_backoff_bounds():
    rng = random.Random(0)
    fs = FetchSettings(backoff_base=0.2, backoff_cap=10)
    for attempt in range(8):
        limit = min(10, 0.2 * 2 ** attempt)
        delays = [backoff(attempt, fs, None, rng) for _ in range(200)]
        assert all(0 <= d <= limit for d in delays)
        assert max(delays) > limit / 2                     # full jitter spreads over the range
    assert all(3 <= backoff(0, fs, 3, rng) <= 10 for _ in range(50))   # Retry-After is a floor...
    assert backoff(0, fs, 3600, rng) == 10                 # ...but never past the cap


def test_parse_retry_after():
    assert parse_retry_after("1") == 1.0 and parse_retry_after("2.5") == 2.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("") is None
    assert parse_retry_after("soon") is None
    later = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=120), usegmt=True)
    assert 100 < parse_retry_after(later) <= 120
    past = format_datetime(datetime.now(timezone.utc) - timedelta(days=1), usegmt=True)
    assert parse_retry_after(past) == 0.0


def test_other_spellings_of_a_refused_address_are_refused(http_server):
    """IDNA maps fullwidth digits and ideographic dots to ASCII: the check sees the host aiohttp would use."""
    policy = NetworkPolicy(deny=("127.0.0.0/8",))
    port = http_server.port
    for url in (f"http://１２７.０.０.１:{port}/img/hopper.jpg", f"http://127。0。0。1:{port}/img/hopper.jpg"):
        with pytest.raises(BadRecord) as err:
            check_url(url, policy)
        assert err.value.reason == "url_forbidden", url
