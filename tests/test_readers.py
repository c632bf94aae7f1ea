"""producer/readers.py: format detection, lazy chunking and readable manifest errors, on the shared files."""
from __future__ import annotations

import base64
import io
import json
import shutil
import tracemalloc
import zipfile

import numpy as np
import pytest

from datagen import (COURSE_DIR, SHARED_DATA, SIGN_MNIST_CSV, jpeg_bytes, sign_rows, write_base64_json,
                     write_class_folders, write_dirty_csv, write_url_manifest)
from producer.readers import Base64Reader, CsvReader, NpzReader, UrlReader, detect_format, open_source
from signq.errors import ManifestError
from signq.labels import ClassSet
from signq.settings import ImageSpec
from worker import decoder
from worker.cleaner import Collector
from worker.ingest import JobView, _process_base64, b64decode

MNIST = SHARED_DATA / "mnist" / "mnist.npz"


# -- detect_format ---------------------------------------------------------------------------------

@pytest.mark.parametrize("path, fmt", [
    (COURSE_DIR / "urls.jsonl", "urls"),
    (COURSE_DIR / "base64_single.json", "base64"),
    (COURSE_DIR / "base64_list.json", "base64"),
    (SIGN_MNIST_CSV, "csv"),
    (MNIST, "npz"),
])
def test_detect_format_of_shared_files(path, fmt):
    assert detect_format(str(path)) == fmt


def test_detect_format_json_lines_under_the_course_name(tmp_path):
    data_json = tmp_path / "data.json"          # the course's original name for urls.jsonl
    shutil.copy(COURSE_DIR / "urls.jsonl", data_json)
    assert detect_format(str(data_json)) == "urls"


def test_detect_format_url_synonym_and_folder(tmp_path):
    (tmp_path / "m.json").write_text('{"url": "http://example.com/a.jpg", "label": "a"}\n')
    assert detect_format(str(tmp_path / "m.json")) == "urls"
    write_class_folders(tmp_path / "tree", [("A", "x", np.zeros(784, np.uint8))])
    assert detect_format(str(tmp_path / "tree")) == "folder"


def test_detect_format_errors_name_the_file(tmp_path):
    with pytest.raises(ManifestError, match=r"nothere\.csv: no such file"):
        detect_format(str(tmp_path / "nothere.csv"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ManifestError, match=r"notes\.txt: cannot tell the format.*--format"):
        detect_format(str(tmp_path / "notes.txt"))


def test_missing_file_with_explicit_format_is_a_manifest_error(tmp_path):
    for fmt in ("urls", "base64", "csv", "npz"):
        with pytest.raises(ManifestError, match="gone.x: no such file"):
            open_source(str(tmp_path / "gone.x"), fmt)


# -- URLs ------------------------------------------------------------------------------------------

def test_url_chunks_sizes_starts_and_positions(tmp_path):
    path = write_url_manifest(tmp_path / "m.jsonl", [(f"http://h/{i}.jpg", "b") for i in range(7)])
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:3]) + "\n" + "".join(lines[3:]))      # a blank line 4 is skipped
    chunks = list(open_source(str(path)).chunks(3))
    assert [(c.kind, c.count, c.start) for c in chunks] == [("urls", 3, 1), ("urls", 3, 5), ("urls", 1, 8)]
    assert [item[0] for c in chunks for item in c.items] == ["1", "2", "3", "5", "6", "7", "8"]
    assert chunks[1].items[0] == ["5", "http://h/3.jpg", "b"]


def test_url_reader_course_file_and_url_synonym(tmp_path):
    items = [i for c in UrlReader(str(COURSE_DIR / "urls.jsonl")).chunks(100) for i in c.items]
    assert len(items) == len((COURSE_DIR / "urls.jsonl").read_text().splitlines())
    assert [label for _, _, label in items] == list("bbbaaaccc")
    assert all(url.startswith("https://") and url.endswith(f"_{label.upper()}.jpg") for _, url, label in items)
    (tmp_path / "u.jsonl").write_text('{"url": "http://h/a.jpg", "label": "a"}\n{"label": "c"}\n')
    assert list(UrlReader(str(tmp_path / "u.jsonl")).records()) == [["1", "http://h/a.jpg", "a"], ["2", None, "c"]]


def test_url_reader_bad_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"content": "http://h/a.jpg", "label": "a"}\n\n{"content": oops}\n')
    with pytest.raises(ManifestError, match=r"bad\.jsonl, line 3: not valid JSON"):
        list(UrlReader(str(path)).records())
    path.write_text('["http://h/a.jpg", "a"]\n')
    with pytest.raises(ManifestError, match=r"bad\.jsonl, line 1: expected a JSON object, got list"):
        list(UrlReader(str(path)).records())


# -- base64 ----------------------------------------------------------------------------------------

def test_base64_course_files():
    single = list(Base64Reader(str(COURSE_DIR / "base64_single.json")).records())
    pair = list(Base64Reader(str(COURSE_DIR / "base64_list.json")).records())
    assert [(n, label) for n, label, _ in single] == [(0, "b")]
    assert [(n, label) for n, label, _ in pair] == [(0, "b"), (1, "b")]
    img = decoder.decode(b64decode(pair[0][2]), ImageSpec())
    assert img.shape == (28, 28, 1)


def test_base64_streams_a_large_array(tmp_path):
    rows = sign_rows(24).to_numpy()
    items = [(chr(ord("a") + int(rows[i % 24, 0])), jpeg_bytes(rows[i % 24, 1:])) for i in range(3000)]
    path = write_base64_json(tmp_path / "big.json", items, as_list=True)
    text = path.read_text()
    cut = tmp_path / "cut.json"
    cut.write_text(text[: len(text) * 9 // 10])          # valid for ~2,700 items, then the file just stops
    chunks = Base64Reader(str(cut)).chunks(500)
    first = [next(chunks) for _ in range(5)]               # yielded before the reader reaches the broken end
    assert [(c.count, c.start) for c in first] == [(500, 0), (500, 500), (500, 1000), (500, 1500), (500, 2000)]
    with pytest.raises(ManifestError, match=r"cut\.json: invalid JSON"):
        list(chunks)
    full = list(Base64Reader(str(path)).chunks(500))
    assert [c.start for c in full] == list(range(0, 3000, 500)) and sum(c.count for c in full) == 3000
    line = json.loads(full[1].payload.splitlines()[0])
    assert line[:2] == [500, items[500][0]] and base64.b64decode(line[2]) == items[500][1]


def test_base64_positions_and_data_url_prefix(tmp_path):
    rows = sign_rows(3).to_numpy()
    jpegs = [jpeg_bytes(r[1:]) for r in rows]
    doc = [{"b": base64.b64encode(jpegs[0]).decode()},
           {"c": "data:image/jpeg;base64," + base64.b64encode(jpegs[1]).decode()},
           {"d": "data:image/jpeg," + base64.b64encode(jpegs[2]).decode()},      # no ;base64 marker
           {"e": "not base64 !!"}]
    (tmp_path / "p.json").write_text(json.dumps(doc))
    chunk, = open_source(str(tmp_path / "p.json")).chunks(10)
    job = JobView("t", ClassSet.parse("letters24"), ImageSpec())
    out = Collector("p.json", job.image)
    order = _process_base64(chunk.payload, job, out)
    result = out.finish(order)
    assert order == ["0", "1", "2", "3"]
    assert list(result.keys) == ["p.json:0", "p.json:1"]
    assert list(result.labels) == [1, 2]
    assert {r.position: r.reason for r in result.rejects} == {"2": "base64_invalid", "3": "base64_invalid"}


@pytest.mark.parametrize("text", ["", "   \n", "42", '"x"'])
def test_base64_reader_rejects_non_container(tmp_path, text):
    (tmp_path / "b.json").write_text(text)
    with pytest.raises(ManifestError, match=r"b\.json, line 1: expected a JSON object"):
        list(Base64Reader(str(tmp_path / "b.json")).records())


# -- CSV -------------------------------------------------------------------------------------------

def test_csv_chunks_carry_file_line_numbers(tmp_path):
    path = tmp_path / "dirty.csv"
    write_dirty_csv(path)
    lines = path.read_bytes().splitlines(keepends=True)
    chunks = list(CsvReader(str(path)).chunks(64))
    assert [c.start for c in chunks] == list(range(2, len(lines) + 1, 64))
    assert sum(c.count for c in chunks) == len(lines) - 1
    assert all(c.kind == "csv" and c.payload for c in chunks)
    assert b"".join(c.payload for c in chunks) == b"".join(lines[1:])
    assert chunks[1].payload.splitlines(keepends=True)[0] == lines[64 + 1]


def test_csv_gz_reads_the_real_file_lazily():
    first = next(CsvReader(str(SIGN_MNIST_CSV)).chunks(5))
    assert (first.count, first.start) == (5, 2)
    assert first.payload.split(b"\r\n")[0].split(b",")[0] == str(sign_rows(1).iloc[0, 0]).encode()


def test_csv_without_header_names_file_and_line(tmp_path):
    path = tmp_path / "nohead.csv"
    path.write_text(",".join(["3"] + ["0"] * 784) + "\n")
    with pytest.raises(ManifestError, match=r"nohead\.csv, line 1: expected a header 'label,pixel1.*Received: b'3,0"):
        list(CsvReader(str(path)).chunks(10))


# -- folders ---------------------------------------------------------------------------------------

def test_folder_chunks(tmp_path):
    px = sign_rows(5).to_numpy()[:, 1:]
    write_class_folders(tmp_path, [("b", "x1", px[0]), ("a", "x2", px[1]), ("a", "x0", px[2]), ("c", "y", px[3])])
    (tmp_path / "A" / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    chunks = list(open_source(str(tmp_path)).chunks(3))
    assert [(c.kind, c.count, c.start) for c in chunks] == [("files", 3, 0), ("files", 1, 3)]
    items = [i for c in chunks for i in c.items]
    assert [(pos, label) for pos, _, label in items] == [("A/x0.png", "A"), ("A/x2.png", "A"), ("B/x1.png", "B"),
                                                         ("C/y.png", "C")]
    assert items[0][1] == str(tmp_path / "A" / "x0.png")


# -- npz -------------------------------------------------------------------------------------------

def test_npz_blocks_equal_the_arrays():
    chunks = list(open_source(str(MNIST)).chunks(7000))
    with np.load(MNIST) as z:
        for name, yname in (("x_train", "y_train"), ("x_test", "y_test")):
            mine = [c for c in chunks if c.extra["array"] == name]
            assert [c.start for c in mine] == list(range(0, len(z[name]), 7000))
            blocks = [np.load(io.BytesIO(c.payload)) for c in mine]
            np.testing.assert_array_equal(np.concatenate([b["x"] for b in blocks]), z[name])
            np.testing.assert_array_equal(np.concatenate([b["y"] for b in blocks]), z[yname])


def test_npz_memory_stays_flat():
    tracemalloc.start()
    try:
        chunks = NpzReader(str(MNIST)).chunks(1000)
        for _ in range(10):
            next(chunks)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20          # x_train alone is 47 MB


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "other.npz", images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ManifestError, match=r"other\.npz: expected arrays x_train/y_train.*images\.npy"):
        list(NpzReader(str(tmp_path / "other.npz")).chunks(10))
    np.savez(tmp_path / "short.npz", x_train=np.ones((100, 28, 28), np.uint8), y_train=np.zeros(100, np.uint8))
    with zipfile.ZipFile(tmp_path / "short.npz") as zin, zipfile.ZipFile(tmp_path / "cut.npz", "w") as zout:
        zout.writestr("y_train.npy", zin.read("y_train.npy"))
        zout.writestr("x_train.npy", zin.read("x_train.npy")[:-784 * 40])      # 60 rows of the 100 declared
    chunks = NpzReader(str(tmp_path / "cut.npz")).chunks(25)
    assert [next(chunks).count for _ in range(2)] == [25, 25]
    with pytest.raises(ManifestError, match=r"x_train: the array ends early, at row 60 of the 100"):
        list(chunks)
