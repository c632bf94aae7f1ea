"""Shared storage: a root (local path or fsspec URL) and safe keys beneath it.

Every key is built with ``Storage.path(*parts)``; each part is checked so that input from users (dataset
names, job ids, file names) can never escape the root. Writes are atomic: a temporary name, then a rename.
"""
from __future__ import annotations

import io
import json
import os
import re
import uuid
from contextlib import contextmanager

import fsspec

from signq.errors import StorageKeyError

_SAFE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]{0,199}$")


def check_name(part: str, what: str = "name") -> str:
    """A single path component made of safe characters; raises StorageKeyError otherwise."""
    if not isinstance(part, str) or not _SAFE_PART.match(part) or part in (".", "..") or ".." in part:
        raise StorageKeyError(
            f"Invalid {what}: use letters, digits and . _ - + = (no slashes, no '..', at most 200 chars). "
            f"Received: {part!r}"
        )
    return part


class Storage:
    def __init__(self, root: str):
        self.fs, path = fsspec.core.url_to_fs(root)
        self.local = self.fs.protocol in ("file", "local") or "file" in tuple(self.fs.protocol)
        self.root = os.path.abspath(path) if self.local else path.rstrip("/")
        self.url = root

    def path(self, *parts: str) -> str:
        for p in parts:
            for piece in str(p).split("/"):
                check_name(piece, "storage key part")
        return "/".join([self.root, *parts])

    def exists(self, path: str) -> bool:
        return self.fs.exists(path)

    def makedirs(self, path: str):
        self.fs.makedirs(path, exist_ok=True)

    def open(self, path: str, mode: str = "rb"):
        return self.fs.open(path, mode)

    def read_bytes(self, path: str) -> bytes:
        with self.fs.open(path, "rb") as f:
            return f.read()

    def read_json(self, path: str):
        return json.loads(self.read_bytes(path))

    @contextmanager
    def atomic(self, path: str, mode: str = "wb"):
        """Write to a temporary sibling, then rename onto ``path``: readers never see half a file."""
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
        self.makedirs(path.rsplit("/", 1)[0])
        try:
            with self.fs.open(tmp, mode) as f:
                yield f
            self.fs.mv(tmp, path)
        except BaseException:
            if self.fs.exists(tmp):
                self.fs.rm(tmp)
            raise

    def write_bytes(self, path: str, data: bytes):
        with self.atomic(path) as f:
            f.write(data)

    def write_json(self, path: str, obj):
        self.write_bytes(path, json.dumps(obj, indent=1, sort_keys=True).encode())

    def write_npz(self, path: str, **arrays):
        import numpy as np

        buf = io.BytesIO()
        np.savez(buf, **arrays)
        self.write_bytes(path, buf.getbuffer())

    def load_npz(self, path: str) -> dict:
        import numpy as np

        with np.load(io.BytesIO(self.read_bytes(path)), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def listdir(self, path: str) -> list[str]:
        if not self.fs.exists(path):
            return []
        return sorted(p.rsplit("/", 1)[-1] for p in self.fs.ls(path, detail=False))

    def rm(self, path: str, recursive: bool = False):
        if self.fs.exists(path):
            self.fs.rm(path, recursive=recursive)
