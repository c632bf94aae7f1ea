"""Fetch URLs concurrently with aiohttp, bounded in every direction.

One ``ClientSession`` per call of ``fetch_all`` (one sync->async boundary per task), a connector bounded in
total and per host, connect/read timeouts, retries with exponential backoff and full jitter on timeouts,
connection errors, 5xx and 429 (honouring ``Retry-After``), redirects followed by hand so every hop is
checked, a body cap enforced while reading, and addresses checked after DNS resolution against the
allow/deny networks (link-local and cloud metadata endpoints are refused by default).

Bodies are handed to ``handle`` in batches on a worker thread, so decoding never runs on the event loop and
at most ~``batch_bytes`` of undecoded bodies are held at once.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from email.utils import parsedate_to_datetime
from urllib.parse import urljoin

import aiohttp
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver
from yarl import URL

from signq.settings import FetchSettings
from worker.records import BadRecord

log = logging.getLogger(__name__)
MAX_REDIRECTS = 5
REDIRECTS = (301, 302, 303, 307, 308)


class NetworkPolicy:
    """Which IP addresses may be fetched: never the deny list; only the allow list when it is set."""

    def __init__(self, deny=(), allow=()):
        self.deny = [ipaddress.ip_network(n, strict=False) for n in deny]
        self.allow = [ipaddress.ip_network(n, strict=False) for n in allow]
        self._literal: dict[str, str | None] = {}

    def literal_refused(self, hostname: str) -> str | None:
        """For a literal IP host, the address if the policy refuses it (cached per host: ~1 us, not ~50)."""
        if hostname not in self._literal:
            try:
                literal = ipaddress.ip_address(hostname)
            except ValueError:
                self._literal[hostname] = None
            else:
                self._literal[hostname] = None if self.allowed(str(literal)) else str(literal)
        return self._literal[hostname]

    def allowed(self, ip: str) -> bool:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
        if getattr(addr, "ipv4_mapped", None):
            addr = addr.ipv4_mapped
        if any(addr in n for n in self.deny if n.version == addr.version):
            return False
        return not self.allow or any(addr in n for n in self.allow if n.version == addr.version)


class ForbiddenAddress(OSError):
    pass


class GuardedResolver(AbstractResolver):
    """Resolve with aiohttp's default resolver, then drop addresses the policy refuses."""

    def __init__(self, policy: NetworkPolicy):
        self.policy, self.inner = policy, DefaultResolver()

    async def resolve(self, host, port=0, family=socket.AF_INET):
        hosts = [h for h in await self.inner.resolve(host, port, family) if self.policy.allowed(h["host"])]
        if not hosts:
            raise ForbiddenAddress(f"{host} resolves only to refused addresses")
        return hosts

    async def close(self):
        await self.inner.close()


class Retryable(Exception):
    def __init__(self, reason, detail, retry_after=None):
        super().__init__(reason, detail, retry_after)
        self.reason, self.detail, self.retry_after = reason, detail, retry_after


def check_url(url, policy: NetworkPolicy) -> URL:
    """Scheme http/https, a host, and (for literal IPs) an allowed address. Returns the URL that will be
    fetched: the check runs on yarl's normalised host (IDNA maps e.g. fullwidth digits to ASCII), the same
    host aiohttp connects to, so no spelling of a refused address slips through."""
    if not isinstance(url, str) or not url:
        raise BadRecord("url_invalid", f"expected a URL string, got {url!r}"[:200])
    try:
        u = as_yarl(url)
        host = u.host
    except (ValueError, UnicodeError) as e:
        raise BadRecord("url_invalid", f"{e}: {url[:200]}") from None
    if u.scheme not in ("http", "https") or not host:
        raise BadRecord("url_invalid", f"only http(s) URLs with a host are fetched: {url[:200]}")
    refused = policy.literal_refused(host.strip("[]"))
    if refused:
        raise BadRecord("url_forbidden", f"address {refused} is refused by the network policy")
    return u


_ALREADY_ENCODED = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]*")


def as_yarl(url: str) -> URL:
    """A URL object; one made only of characters that need no quoting skips yarl's requoting (~40 us)."""
    return URL(url, encoded=True) if _ALREADY_ENCODED.fullmatch(url) else URL(url)


def backoff(attempt: int, fs: FetchSettings, retry_after: float | None, rng=random) -> float:
    delay = rng.uniform(0, min(fs.backoff_cap, fs.backoff_base * 2 ** attempt))
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, fs.backoff_cap)


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


async def read_capped(resp: aiohttp.ClientResponse, cap: int) -> bytes:
    """The body, refused early from Content-Length and always counted as read: with Content-Encoding the
    declared length is the compressed size, and a gzip body of a few kB can inflate to gigabytes."""
    if resp.content_length is not None and resp.content_length > cap:
        raise BadRecord("too_large", f"Content-Length {resp.content_length} > cap {cap}")
    parts, size = [], 0
    async for block in resp.content.iter_chunked(1 << 16):
        size += len(block)
        if size > cap:
            raise BadRecord("too_large", f"body exceeds cap {cap} bytes")
        parts.append(block)
    return b"".join(parts)


async def get_once(session, url, fs: FetchSettings, policy) -> bytes:
    for _ in range(MAX_REDIRECTS + 1):
        target = check_url(url, policy)
        try:
            async with session.get(target, allow_redirects=False) as resp:
                if resp.status in REDIRECTS and "Location" in resp.headers:
                    url = urljoin(url, resp.headers["Location"])
                    continue
                if resp.status == 429 or resp.status >= 500:
                    raise Retryable("http_status", f"HTTP {resp.status}", parse_retry_after(resp.headers.get("Retry-After")))
                if resp.status >= 400:
                    raise BadRecord("http_status", f"HTTP {resp.status}")
                return await read_capped(resp, fs.max_body_bytes)
        except aiohttp.ClientConnectorError as e:
            if isinstance(getattr(e, "os_error", None), ForbiddenAddress) or isinstance(e.__cause__, ForbiddenAddress):
                raise BadRecord("url_forbidden", str(e)[:200]) from None
            raise Retryable("connection", str(e)[:200]) from None
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError) as e:
            raise Retryable("timeout", f"no answer within the timeout ({type(e).__name__})") from None
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, aiohttp.ClientResponseError) as e:
            raise Retryable("connection", f"{type(e).__name__}: {e}"[:200]) from None
        except (aiohttp.InvalidURL, ValueError) as e:
            raise BadRecord("url_invalid", str(e)[:200]) from None
    raise BadRecord("redirect", f"more than {MAX_REDIRECTS} redirects")


async def fetch_one(session, url, fs: FetchSettings, policy) -> bytes:
    for attempt in range(fs.retries + 1):
        try:
            return await get_once(session, url, fs, policy)
        except Retryable as e:
            if attempt == fs.retries:
                raise BadRecord(e.reason, f"{e.detail} (after {attempt + 1} attempts)") from None
            await asyncio.sleep(backoff(attempt, fs, e.retry_after))
    raise AssertionError("unreachable")


def fetch_all(urls: list[str], fs: FetchSettings, handle, batch_bytes: int = 16 << 20) -> dict[int, BadRecord]:
    """Fetch every URL; call ``handle([(index, body), ...])`` on a worker thread as bodies arrive.

    Returns the failures by index. ``handle`` calls happen one at a time, in arrival order.
    """
    return asyncio.run(_fetch_all(urls, fs, handle, batch_bytes))


async def _fetch_all(urls, fs: FetchSettings, handle, batch_bytes):
    policy = NetworkPolicy(fs.deny_networks, fs.allow_networks)
    failures: dict[int, BadRecord] = {}
    loop = asyncio.get_running_loop()
    batch: list = []
    held = 0
    decoding: list = []
    connector = aiohttp.TCPConnector(limit=fs.connections, limit_per_host=fs.connections_per_host,
                                     resolver=GuardedResolver(policy), ttl_dns_cache=300)
    timeout = aiohttp.ClientTimeout(total=fs.total_timeout, connect=fs.connect_timeout, sock_connect=fs.connect_timeout,
                                    sock_read=fs.read_timeout)
    sem = asyncio.Semaphore(fs.connections)

    with ThreadPoolExecutor(1, thread_name_prefix="decode") as pool:
        def flush():
            nonlocal batch, held
            if batch:
                decoding.append(loop.run_in_executor(pool, handle, batch))
                batch, held = [], 0

        async def one(i, url):
            nonlocal held
            async with sem:
                try:
                    body = await fetch_one(session, url, fs, policy)
                except BadRecord as e:
                    failures[i] = e
                    return
            batch.append((i, body))
            held += len(body)
            if held >= batch_bytes or len(batch) >= 512:
                flush()
                live = [f for f in decoding if not f.done()]
                if len(live) > 2:           # backpressure: at most ~3 batches of bodies wait for the decoder
                    await asyncio.wait(live, return_when=asyncio.FIRST_COMPLETED)

        async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                         cookie_jar=aiohttp.DummyCookieJar()) as session:
            await asyncio.gather(*(one(i, u) for i, u in enumerate(urls)))
        flush()
        await asyncio.gather(*decoding)
    return failures
