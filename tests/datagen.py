"""Test data made from the real shared files (``../shared/data`` beside the project root), deterministically.

    rows = sign_rows(50)                                   # real Sign Language MNIST rows (DataFrame)
    jpeg = jpeg_bytes(rows.iloc[0, 1:].to_numpy())         # 28x28 grayscale JPEG bytes
    faults = write_dirty_csv(tmp_path / "dirty.csv")       # {"junk": [3, 57, 120], ...} 1-based file lines
    write_url_manifest(tmp_path / "m.jsonl", [(srv.url("/bytes/a"), "a")])
    write_base64_json(tmp_path / "b64.json", [("b", jpeg)], as_list=True)
    write_class_folders(tmp_path / "folders", [("B", "img0", pixels)])

Labels in the CSV are indices into A-Z (A=0 ... Y=24; 9=J and 25=Z never occur); ``letter()`` converts.
"""
from __future__ import annotations

import base64
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SIGN_MNIST_CSV = SHARED_DATA / "sign-mnist" / "sign_mnist_train.csv.gz"
IMAGES_DIR = SHARED_DATA / "images"
COURSE_DIR = SHARED_DATA / "course"
PIXEL_COLUMNS = [f"pixel{i}" for i in range(1, 785)]
HEADER = ",".join(["label", *PIXEL_COLUMNS])


def letter(label: int) -> str:
    """The lowercase letter of a Sign MNIST label index (0 -> "a", 24 -> "y")."""
    return chr(ord("a") + int(label))


def sign_rows(n: int, skip: int = 0) -> pd.DataFrame:
    """Rows ``skip .. skip+n-1`` (0-based, header excluded) of the real training CSV, all columns int64."""
    return pd.read_csv(SIGN_MNIST_CSV, nrows=n, skiprows=range(1, skip + 1))


def jpeg_bytes(pixels, quality: int = 95) -> bytes:
    """Encode 28x28 (or 784 flat) uint8 pixels as a single-channel baseline JPEG."""
    arr = np.asarray(pixels)
    if arr.size != 784 or arr.min() < 0 or arr.max() > 255:
        raise ValueError(f"Expected 784 pixels in 0..255. Received: shape={arr.shape}, range=({arr.min()}, {arr.max()})")
    ok, buf = cv2.imencode(".jpg", arr.reshape(28, 28).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("cv2.imencode failed to encode the pixels as JPEG")
    return buf.tobytes()


def png_bytes(pixels) -> bytes:
    """Encode 28x28 (or 784 flat) uint8 pixels as a grayscale PNG (lossless)."""
    ok, buf = cv2.imencode(".png", np.asarray(pixels, dtype=np.uint8).reshape(28, 28))
    if not ok:
        raise ValueError("cv2.imencode failed to encode the pixels as PNG")
    return buf.tobytes()


def _csv_line(values) -> str:
    return ",".join(str(v) for v in values)


def _fault_lines(extra: pd.DataFrame) -> list[tuple[str, str]]:
    """(fault, line) pairs built from real rows that are not otherwise in the file."""
    rows = extra.to_numpy()
    labels = rows[:, 0]
    faults = [("junk", _csv_line([labels[i], *["fwefew"] * 784])) for i in range(3)]
    faults += [("all_zero", _csv_line([label, *[0] * 784])) for label in (0, 1, 2, 3)]
    missing = [str(v) for v in rows[7]]
    missing[400] = ""
    faults.append(("missing_value", ",".join(missing)))
    out_of_range = rows[8].copy()
    out_of_range[300] = 300
    faults.append(("out_of_range", _csv_line(out_of_range)))
    faults.append(("too_few_pixels", _csv_line(rows[9][:700])))
    faults.append(("invalid_label", _csv_line([9, *rows[10][1:]])))
    return faults


def write_dirty_csv(path, n: int = 200) -> dict[str, list[int]]:
    """Write ``n`` real rows plus the course's faults, shuffled in with a fixed seed; say where each fault is.

    Faults (each on its own line): 3 ``junk`` rows (``fwefew`` in every pixel), 4 ``all_zero`` rows (labels 0-3,
    so they are not duplicates of each other), 3 ``duplicate`` rows (exact copies of earlier clean rows;
    one row is copied twice; the first occurrence is listed as clean), and one each of ``missing_value`` (an
    empty pixel), ``out_of_range`` (a pixel of 300), ``too_few_pixels`` (700 pixels) and ``invalid_label`` (9=J).
    Returns {fault: sorted 1-based line numbers}, the header being line 1; key ``clean`` lists the rows a cleaner
    must keep, in file order.
    """
    if n < 10:
        raise ValueError(f"write_dirty_csv needs n >= 10 real rows to copy duplicates from. Received: n={n}")
    rng = np.random.default_rng(0)
    records = [("clean", _csv_line(row)) for row in sign_rows(n).to_numpy()]
    for fault in _fault_lines(sign_rows(11, skip=n)):
        records.insert(int(rng.integers(0, len(records) + 1)), fault)
    clean = [r for r in records if r[0] == "clean"]
    for original in (clean[1], clean[5], clean[5]):  # copies land after their original
        at = records.index(original)
        records.insert(int(rng.integers(at + 1, len(records) + 1)), ("duplicate", original[1]))
    Path(path).write_text("\n".join([HEADER, *(line for _, line in records)]) + "\n")
    where: dict[str, list[int]] = {}
    for lineno, (fault, _) in enumerate(records, start=2):
        where.setdefault(fault, []).append(lineno)
    return where


def write_url_manifest(path, entries) -> Path:
    """JSON Lines ``{"content": url, "label": letter}`` from (url, letter) pairs, as the course's urls.jsonl."""
    lines = [json.dumps({"content": url, "label": label}) for url, label in entries]
    Path(path).write_text("".join(line + "\n" for line in lines))
    return Path(path)


def write_base64_json(path, items, as_list: bool = False) -> Path:
    """(letter, image bytes) pairs as base64 JSON: one ``{label: b64, ...}`` object (labels must then be
    distinct), or with ``as_list`` a JSON array of one-key objects, as the course's data.json / data2.json."""
    pairs = [(label, base64.b64encode(data).decode("ascii")) for label, data in items]
    if as_list:
        doc = [{label: b64} for label, b64 in pairs]
    else:
        doc = dict(pairs)
        if len(doc) != len(pairs):
            raise ValueError(f"Labels repeat, so one JSON object cannot hold them; pass as_list=True. "
                             f"Received labels: {[label for label, _ in pairs]}")
    Path(path).write_text(json.dumps(doc, indent=1))
    return Path(path)


def write_class_folders(root, items) -> list[Path]:
    """Write (label, name, pixels) items as ``ROOT/<Label>/<name>.png`` (label upper-cased); returns the paths."""
    paths = []
    for label, name, pixels in items:
        path = Path(root) / str(label).upper() / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png_bytes(pixels))
        paths.append(path)
    return paths
