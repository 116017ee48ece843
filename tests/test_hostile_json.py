"""Hostile JSON inputs: every JSON file the toolchain reads (COCO annotations, calibration boxes, contracts,
ONNX metadata, ``--boxes``) goes through one reader, so nesting too deep for Python's parser, bytes that are
not UTF-8 and numbers too long to convert end in one ChsError naming the file, never a RecursionError."""

from __future__ import annotations

import pytest

from chs.align_cmd import BoxBook
from chs.runtime.artifact import META_KEY, ModelMeta
from chs.runtime.contract import read_contract
from chs.runtime.datasets import load_dataset
from chs.runtime.errors import ChsError
from chs.runtime.files import parse_json, read_json

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("text, message", [
    (DEEP, "x is nested too deeply to read"),
    (b"\xff\xfe{}", "x is not UTF-8 text"),
    ("{\"a\": 1,\n", "x is not valid JSON (line 2"),
    ("1" * 5000, "x cannot be read: Exceeds the limit"),
])
def test_parse_json_failures_are_one_chs_error(text, message):
    with pytest.raises(ChsError) as e:
        parse_json(text, "x")
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_parse_json_reads_utf8_with_bom():
    assert parse_json("\ufeff{\"a\": [1]}".encode(), "x") == {"a": [1]}


def test_every_json_reader_names_the_deep_file(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text(DEEP)
    for call, what in [(lambda: read_json(deep, "boxes file"), "boxes file"),
                       (lambda: load_dataset(deep), "COCO annotation file"),
                       (lambda: read_contract(deep), "contract file"),
                       (lambda: BoxBook.read(str(deep)), "boxes file")]:
        with pytest.raises(ChsError, match=f"{what} {deep} is nested too deeply"):
            call()
    with pytest.raises(ChsError, match="model's CHS metadata is nested too deeply"):
        ModelMeta.from_props({META_KEY: DEEP})


def test_a_nul_byte_in_any_input_path_is_one_chs_error():
    # the check lives in the shared input opener: os.open / os.stat would raise a bare ValueError
    with pytest.raises(ChsError, match=r"^boxes file path 'a\\x00b.json' contains a NUL byte$"):
        read_json("a\0b.json", "boxes file")


def test_calibration_boxes_file_nested_too_deeply(tmp_path):
    pytest.importorskip("onnx")
    from chs.calibration.data import calibration_items

    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "boxes.json").write_text(DEEP)
    with pytest.raises(ChsError, match="calibration boxes file .*boxes.json is nested too deeply"):
        calibration_items(tmp_path)
