"""worker/cleaner.py and signq/labels.py: the course's dirty-CSV faults, line numbers, labels, blanks, duplicates."""
from __future__ import annotations

import collections

import numpy as np
import pytest

from datagen import SIGN_MNIST_CSV, sign_rows, write_dirty_csv
from producer.readers import CsvReader
from signq.errors import ConfigError
from signq.labels import LETTERS24, ClassSet
from signq.settings import ImageSpec
from worker.cleaner import Collector, label_index, parse_csv
from worker.records import BadRecord

LETTERS = ClassSet.parse("letters24")
SPEC = ImageSpec()
FAULT_REASONS = {"junk": "csv_non_numeric", "all_zero": "blank", "duplicate": "duplicate",
                 "missing_value": "csv_missing", "out_of_range": "csv_out_of_range",
                 "too_few_pixels": "csv_wrong_length", "invalid_label": "label_unknown"}


def clean(data: bytes, start: int, spec=SPEC, classes=LETTERS, source="d.csv"):
    out = Collector(source, spec)
    parse_csv(data, start, spec, classes, out)
    return out.finish()


def by_reason(rejects) -> dict[str, list[int]]:
    found = collections.defaultdict(list)
    for r in rejects:
        found[r.reason].append(int(r.position))
    return {k: sorted(v) for k, v in found.items()}


@pytest.fixture(scope="module")
def dirty(tmp_path_factory):
    path = tmp_path_factory.mktemp("csv") / "dirty.csv"
    faults = write_dirty_csv(path)
    lines = path.read_bytes().split(b"\n")      # lines[k - 1] is file line k
    return path, faults, lines


def test_every_course_fault_found_on_its_line(dirty):
    path, faults, lines = dirty
    out = clean(b"\n".join(lines[1:]), 2)
    expected = {FAULT_REASONS[f]: lines_ for f, lines_ in faults.items() if f != "clean"}
    assert by_reason(out.rejects) == expected
    assert [int(k.split(":")[1]) for k in out.keys] == faults["clean"]


def test_clean_rows_keep_their_pixels_and_label_index(dirty):
    path, faults, lines = dirty
    out = clean(b"\n".join(lines[1:]), 2)
    rows = np.array([[int(v) for v in lines[k - 1].split(b",")] for k in faults["clean"]])
    expected = [LETTERS24.index(chr(ord("A") + code)) for code in rows[:, 0]]
    assert list(out.labels) == expected
    assert out.labels.dtype == np.int16 and out.images.dtype == np.uint8
    np.testing.assert_array_equal(out.images.reshape(len(rows), -1), rows[:, 1:])
    k_rows = rows[:, 0] == 10
    assert k_rows.any() and (out.labels[k_rows] == 9).all()   # code 10 is K, index 9: J (code 9) is not a class
    assert (out.labels[rows[:, 0] == 24] == 23).all()


def test_duplicates_keep_the_first_occurrence(dirty):
    path, faults, lines = dirty
    out = clean(b"\n".join(lines[1:]), 2)
    dups = [r for r in out.rejects if r.reason == "duplicate"]
    for r in dups:
        original = int(r.detail.rsplit(":", 1)[1])
        assert original in faults["clean"] and original < int(r.position)
        assert lines[original - 1] == lines[int(r.position) - 1]


def test_line_numbers_survive_chunking(dirty):
    path, faults, _ = dirty
    rejects, kept = [], []
    for chunk in CsvReader(str(path)).chunks(37):
        out = clean(chunk.payload, chunk.start)
        rejects += [r for r in out.rejects if r.reason != "duplicate"]   # duplicates across chunks: finalize
        kept += [int(k.split(":")[1]) for k in out.keys]
    expected = {FAULT_REASONS[f]: v for f, v in faults.items() if f not in ("clean", "duplicate")}
    assert by_reason(rejects) == expected
    assert set(faults["clean"]) <= set(kept) <= set(faults["clean"]) | set(faults["duplicate"])


def test_real_crlf_rows_parse_exactly():
    chunk = next(CsvReader(str(SIGN_MNIST_CSV)).chunks(40))
    out = clean(chunk.payload, chunk.start, source="sign_mnist_train.csv.gz")
    rows = sign_rows(40).to_numpy()
    assert out.rejects == []
    assert list(out.keys) == [f"sign_mnist_train.csv.gz:{n}" for n in range(2, 42)]
    np.testing.assert_array_equal(out.images.reshape(40, -1), rows[:, 1:])
    assert list(out.labels) == [LETTERS24.index(chr(ord("A") + c)) for c in rows[:, 0]]


def test_small_spec_and_odd_values():
    spec = ImageSpec(height=2, width=2)
    data = b"\r\n".join([b"3,1,2,3,4", b"4,nan,2,3,4", b"5,-1,1,1,1", b"6,1.5,1,1,1", b",1,2,3,9",
                         b"k,1,2,3,5", b"K,1,2,3,6", b"1,2,3,4,5,6", b"", b"2,7,7,7,7"])
    out = clean(data, 10, spec)
    assert by_reason(out.rejects) == {"csv_non_numeric": [11], "csv_out_of_range": [12, 13], "label_missing": [14],
                                      "csv_wrong_length": [17], "blank": [19]}
    assert list(out.keys) == ["d.csv:10", "d.csv:15", "d.csv:16"]
    assert list(out.labels) == [3, 9, 9]


def test_digits_and_custom_class_sets():
    spec = ImageSpec(height=1, width=2)
    digits = clean(b"0,1,2\n9,3,4\n10,5,6\n7,7,8\n", 2, spec, ClassSet.parse("digits"))
    assert list(digits.labels) == [0, 9, 7] and by_reason(digits.rejects) == {"label_unknown": [4]}
    animals = ClassSet.parse("cat, dog ,bird")
    named = clean(b"dog,1,2\nBIRD,3,4\n0,5,6\nfish,7,8\n", 2, spec, animals)
    assert list(named.labels) == [1, 2, 0] and by_reason(named.rejects) == {"label_unknown": [5]}


def test_finish_orders_by_position_and_drops_blank_and_duplicate():
    spec = ImageSpec(height=1, width=2)
    out = Collector("s", spec)
    out.add_many(np.array([[5, 6], [0, 0]], np.uint8), np.array([1, 2]), ["b", "c"])
    out.add_many(np.array([[5, 6], [1, 2]], np.uint8), np.array([3, 4]), ["a", "d"])
    res = out.finish(order=["a", "b", "c", "d"])
    assert list(res.keys) == ["s:a", "s:d"] and list(res.labels) == [3, 4]
    assert [(r.position, r.reason) for r in res.rejects] == [("b", "duplicate"), ("c", "blank")]
    assert len(set(res.hashes.tolist())) == 2 and res.hashes.dtype == np.dtype("S16")
    empty = Collector("e", spec).finish()
    assert empty.images.shape == (0, 1, 2, 1) and len(empty.keys) == 0


def test_class_set_index():
    assert [LETTERS.index(v) for v in ("A", "k", " y ", 10, "10", 10.0, 24)] == [0, 9, 23, 9, 9, 9, 23]
    assert [LETTERS.index(v) for v in ("J", 9, 25, 10.5, True, None, "", "-1")] == [None] * 8
    digits = ClassSet.parse("digits")
    assert [digits.index(v) for v in ("7", 7, 7.0)] == [7, 7, 7] and digits.index(10) is None
    shuffled = ClassSet.parse("3,1,2")            # names that look like codes: the name wins
    assert [shuffled.index(v) for v in ("1", 1, "3")] == [1, 1, 0]
    assert ClassSet.from_json(LETTERS.to_json()) == LETTERS and len(LETTERS) == 24


def test_class_set_errors_say_what_was_received():
    with pytest.raises(ConfigError, match="at least two classes.*Received: 'solo'"):
        ClassSet.parse("solo")
    with pytest.raises(ConfigError, match="unique"):
        ClassSet.parse("a,A")


@pytest.mark.parametrize("label, reason", [(None, "label_missing"), ("  ", "label_missing"), ("zz", "label_unknown"),
                                           (9, "label_unknown")])
def test_label_index_rejects(label, reason):
    with pytest.raises(BadRecord) as e:
        label_index(label, LETTERS)
    assert e.value.reason == reason
    assert label_index("b", LETTERS) == 1
