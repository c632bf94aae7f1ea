"""One settings object, built once at each entry point (CLI, worker app) from the environment and flags.

Nothing below the entry points reads ``os.environ``: settings are passed down, and what a worker needs of a
job (class set, image shape) travels with the job's spec in the job store.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace

from signq.errors import ConfigError
from signq.labels import ClassSet

ENV_PREFIX = "SIGNQ_"
DEFAULT_STORAGE = "./signq-data"


@dataclass(frozen=True)
class FetchSettings:
    """Bounds for fetching URLs: connections, time, retries, bytes, and which networks are allowed."""

    connections: int = 64               # in flight per task (aiohttp TCPConnector limit)
    connections_per_host: int = 32
    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    total_timeout: float = 60.0         # one attempt, headers to last byte (a trickling server cannot hold a slot)
    retries: int = 3                    # extra attempts on timeouts, connection errors, 5xx, 429
    backoff_base: float = 0.2           # seconds; attempt n waits ~ base * 2**n with full jitter
    backoff_cap: float = 10.0           # no single wait (Retry-After included) is longer than this
    max_body_bytes: int = 10 * 1024 * 1024
    deny_networks: tuple[str, ...] = ("169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128")
    allow_networks: tuple[str, ...] = ()   # when set, only these are allowed (after the deny list)


@dataclass(frozen=True)
class ImageSpec:
    """What every decoded image becomes: height x width x channels, uint8."""

    height: int = 28
    width: int = 28
    channels: int = 1
    max_pixels: int = 64_000_000       # larger inputs are rejected as decompression bombs / oversized

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Settings:
    broker_url: str | None = None       # None: the embedded default (see signq.embedded)
    storage: str = DEFAULT_STORAGE      # local path or fsspec URL, shared by producer and workers
    concurrency: int = 2                # worker processes for `signq worker` / embedded workers
    model_concurrency: int = 1          # model-queue processes (each imports TensorFlow: ~0.6 GB)
    chunk_size: int = 4000              # records per chunk job (bench/ingest: 4000 beats 1000-2000 on URLs)
    visibility_timeout: int = 6 * 3600  # seconds; longer than any task (training included)
    result_interval: float = 0.05       # seconds between polls while waiting on a job
    schedule: str | None = None         # TOML file of [[watch]] entries for celery beat
    embedded_broker: str = "auto"       # auto (redis-server if on PATH, else fakeredis) | redis-server | fakeredis
    classes: ClassSet = field(default_factory=lambda: ClassSet.parse("letters24"))
    image: ImageSpec = field(default_factory=ImageSpec)
    fetch: FetchSettings = field(default_factory=FetchSettings)

    @classmethod
    def from_env(cls, env=None, **overrides) -> "Settings":
        """Read SIGNQ_* variables once; ``overrides`` (from CLI flags) win when not None."""
        env = os.environ if env is None else env
        get = lambda name, default=None: env.get(ENV_PREFIX + name, default)  # noqa: E731
        fetch = FetchSettings(
            connections=_int(get, "FETCH_CONNECTIONS", 64),
            connections_per_host=_int(get, "FETCH_CONNECTIONS_PER_HOST", 32),
            connect_timeout=_float(get, "CONNECT_TIMEOUT", 5.0),
            read_timeout=_float(get, "READ_TIMEOUT", 15.0),
            total_timeout=_float(get, "TOTAL_TIMEOUT", 60.0),
            retries=_int(get, "RETRIES", 3),
            backoff_base=_float(get, "BACKOFF_BASE", 0.2),
            backoff_cap=_float(get, "BACKOFF_CAP", 10.0),
            max_body_bytes=_int(get, "MAX_BODY_BYTES", 10 * 1024 * 1024),
            deny_networks=_list(get("DENY_NETWORKS"), FetchSettings.deny_networks),
            allow_networks=_list(get("ALLOW_NETWORKS"), ()),
        )
        image = ImageSpec(
            height=_int(get, "IMAGE_HEIGHT", 28),
            width=_int(get, "IMAGE_WIDTH", 28),
            channels=_int(get, "IMAGE_CHANNELS", 1),
            max_pixels=_int(get, "MAX_IMAGE_PIXELS", 64_000_000),
        )
        if image.channels not in (1, 3):
            raise ConfigError(f"SIGNQ_IMAGE_CHANNELS must be 1 or 3. Received: {image.channels}")
        base = cls(
            broker_url=get("BROKER_URL") or None,
            storage=get("STORAGE", DEFAULT_STORAGE),
            concurrency=_int(get, "CONCURRENCY", 2),
            model_concurrency=_int(get, "MODEL_CONCURRENCY", 1),
            chunk_size=_int(get, "CHUNK_SIZE", 4000),
            visibility_timeout=_int(get, "VISIBILITY_TIMEOUT", 6 * 3600),
            result_interval=_float(get, "RESULT_INTERVAL", 0.05),
            schedule=get("SCHEDULE") or None,
            embedded_broker=get("EMBEDDED_BROKER", "auto"),
            classes=ClassSet.parse(get("CLASSES", "letters24")),
            image=image,
            fetch=fetch,
        )
        return base.with_overrides(**overrides)

    def with_overrides(self, **overrides) -> "Settings":
        given = {k: v for k, v in overrides.items() if v is not None}
        if isinstance(given.get("classes"), str):
            given["classes"] = ClassSet.parse(given["classes"])
        if given.get("chunk_size") is not None and given["chunk_size"] < 1:
            raise ConfigError(f"--chunk-size must be >= 1. Received: {given['chunk_size']}")
        return replace(self, **given)

    def to_env(self) -> dict:
        """The variables that reproduce these settings in a child process (embedded workers)."""
        env = {ENV_PREFIX + "STORAGE": self.storage, ENV_PREFIX + "VISIBILITY_TIMEOUT": str(self.visibility_timeout)}
        if self.broker_url:
            env[ENV_PREFIX + "BROKER_URL"] = self.broker_url
        return env


def _int(get, name, default):
    raw = get(name)
    try:
        return default if raw in (None, "") else int(raw)
    except ValueError:
        raise ConfigError(f"{ENV_PREFIX}{name} must be an integer. Received: {raw!r}") from None


def _float(get, name, default):
    raw = get(name)
    try:
        return default if raw in (None, "") else float(raw)
    except ValueError:
        raise ConfigError(f"{ENV_PREFIX}{name} must be a number. Received: {raw!r}") from None


def _list(raw, default):
    if raw is None:
        return tuple(default)
    return tuple(x.strip() for x in raw.split(",") if x.strip())
