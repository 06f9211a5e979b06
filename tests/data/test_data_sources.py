"""ListSource and ManifestSource on tiny TSV / CSV / JSONL files written to tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from contrastkit.data import DataError, ListSource, ManifestSource
from contrastkit.errors import InputError


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_list_source_records_groups_and_labels():
    records = [
        {"text": "a", "group": "x", "label": 1},
        {"text": "b", "group": "y", "label": 0},
        {"text": "c", "group": "x", "label": 1},
    ]
    src = ListSource(records, name="toy", classes=["no", "yes"])
    assert len(src) == 3 and src.modalities == ("text",) and src.name == "toy"
    assert src[-1]["text"] == "c"
    names, ids = src.groups()
    assert names == ["x", "y"] and ids.tolist() == [0, 1, 0] and ids.dtype == torch.int64
    assert src.labels().tolist() == [1, 0, 1]
    assert src[np.int64(1)]["text"] == "b" and src[torch.tensor(2)]["text"] == "c"
    with pytest.raises(IndexError):
        src[3]
    with pytest.raises(TypeError, match="integers"):
        src[1.0]
    with pytest.raises(InputError, match="no modality"):
        ListSource([{"label": 1}])
    with pytest.raises(InputError, match="empty"):
        ListSource([])


def test_tsv_manifest_groups_captions_by_image(tmp_path):
    rows = 'image\tcaption\nimg/a.jpg\tA dog.\nimg/a.jpg\tA "quoted" dog.\nimg/b.jpg\tA cat.\n'
    src = ManifestSource(write(tmp_path / "m.tsv", rows))
    assert len(src) == 3 and src.modalities == ("image", "text") and src.name == "m"
    assert src[0]["image"] == str(tmp_path / "img" / "a.jpg")
    assert src[1]["text"] == 'A "quoted" dog.'
    names, ids = src.groups()
    assert names == ["img/a.jpg", "img/b.jpg"] and ids.tolist() == [0, 0, 1]


def test_tab_extension_and_absolute_paths(tmp_path):
    absolute = tmp_path / "elsewhere" / "x.png"
    src = ManifestSource(write(tmp_path / "m.tab", f"image\ttext\n{absolute}\thello\n"))
    assert src[0]["image"] == str(absolute) and src[0]["text"] == "hello"


def test_csv_manifest_with_class_names_and_columns(tmp_path):
    rows = 'file,sentence,kind\na.png,"one, two",cat\nb.png,three,dog\nc.png,four,cat\n'
    src = ManifestSource(
        write(tmp_path / "m.csv", rows), columns={"image": "file", "text": "sentence", "label": "kind"}
    )
    assert src[0]["text"] == "one, two"
    assert src.classes == ["cat", "dog"] and src.labels().tolist() == [0, 1, 0]
    assert src.groups()[1].tolist() == [0, 1, 2]


def test_jsonl_manifest_with_series_and_int_labels(tmp_path):
    np.save(tmp_path / "s.npy", np.ones((2, 5)))
    lines = [
        {"series": [[1, 2, 3]], "text": "up", "label": 2},
        {"series": "s.npy", "text": "flat", "label": "0"},
    ]
    path = write(tmp_path / "m.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    src = ManifestSource(path)
    assert src.modalities == ("text", "series")
    assert src[0]["series"].shape == (1, 3) and src[0]["series"].dtype == np.float32
    assert src[1]["series"].shape == (2, 5)
    assert src.labels().tolist() == [2, 0] and src.classes is None
    assert src.groups()[1].tolist() == [0, 1]  # no image column: one group per row


def test_series_cell_in_csv_is_json(tmp_path):
    src = ManifestSource(write(tmp_path / "m.csv", 'series,text\n"[1, 2, 3]",a\nnot-json,b\n'))
    assert src[0]["series"].tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="neither a JSON list"):
        src[1]


def test_group_by_other_column_and_none(tmp_path):
    path = write(tmp_path / "m.tsv", "image\ttext\tpair\na.jpg\tx\t7\nb.jpg\ty\t7\na.jpg\tz\t8\n")
    assert ManifestSource(path, group_by="pair").groups()[1].tolist() == [0, 0, 1]
    assert ManifestSource(path, group_by=None).groups()[1].tolist() == [0, 1, 2]
    with pytest.raises(DataError, match="group_by='nope'"):
        ManifestSource(path, group_by="nope")


def test_manifest_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        ManifestSource(tmp_path / "missing.tsv")
    with pytest.raises(DataError, match="format.*'.txt'"):
        ManifestSource(write(tmp_path / "m.txt", "image\n"))
    with pytest.raises(DataError, match=r"'caption'.*columns found: \['image', 'text'\]"):
        ManifestSource(write(tmp_path / "a.tsv", "image\ttext\na\tb\n"), columns={"text": "caption"})
    with pytest.raises(DataError, match="no data rows"):
        ManifestSource(write(tmp_path / "b.tsv", "image\ttext\n"))
    with pytest.raises(DataError, match="no data rows"):
        ManifestSource(write(tmp_path / "c.jsonl", "\n"))
    with pytest.raises(DataError, match=r"no modality column.*\['foo', 'bar'\]"):
        ManifestSource(write(tmp_path / "d.csv", "foo,bar\n1,2\n"))
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        ManifestSource(write(tmp_path / "e.jsonl", '{"text": "a"}\n{oops\n'))
    with pytest.raises(DataError, match="empty 'label'"):
        ManifestSource(write(tmp_path / "f.csv", "text,label\na,1\nb,\n"))
    with pytest.raises(InputError, match="not a record key"):
        ManifestSource(write(tmp_path / "g.csv", "text\na\n"), columns={"caption": "text"})


def test_empty_cells_stay_records(tmp_path):
    src = ManifestSource(write(tmp_path / "m.tsv", "image\ttext\n\t \na.jpg\n"))
    assert len(src) == 2
    assert src[0]["image"] == "" and src[0]["text"] == " "
    assert src[1]["text"] == ""  # a short row: the dataset reports it as a bad record


def test_extra_cells_and_late_jsonl_keys_are_not_lost(tmp_path):
    with pytest.raises(DataError, match=r"row 2 has 3 cells but the header has 2 .*quote cells"):
        ManifestSource(write(tmp_path / "m.csv", "image,caption\na.jpg,A dog, running fast\n"))
    rows = '{"image": "a.jpg", "text": "a"}\n{"image": "b.jpg", "text": "b", "label": 1}\n'
    with pytest.raises(DataError, match="row 1 has an empty 'label'"):  # seen in row 2, not dropped
        ManifestSource(write(tmp_path / "m.jsonl", rows))
