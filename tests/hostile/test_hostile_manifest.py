"""Hostile training data: manifests with missing columns, missing, truncated, empty and non-image
files, decompression bombs, empty, huge and control-character captions, and non-UTF-8 bytes.

A bad row is skipped and counted (``data_issues.txt``), never a crash; a file that cannot be read
as a manifest at all is one line naming it; random bytes as an image and random text as a caption
are either used or reported, never a traceback."""

from __future__ import annotations

import io

import pytest
import torch
from hostile_cli import one_line_error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import TINY_RUN
from contrastkit.cli import main
from contrastkit.data import BadRecord, ByteTokenizer, ContrastiveDataset, ListSource, ManifestSource
from contrastkit.data.transforms import ImageTransform, TextTransform

RUN = [arg for item in TINY_RUN if not item.startswith("data.train") for arg in ("--set", item)]


def _png(color=(200, 30, 30), size=(16, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def _bomb() -> bytes:
    """A tiny PNG whose header declares 20,000 x 20,000 pixels (over PIL's bomb limit when decoded)."""
    buffer = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def hostile_manifest(tmp_path):
    """40 good rows and one row of each kind of damage."""
    images = tmp_path / "img"
    images.mkdir()
    rows = []
    for i in range(40):
        (images / f"good{i}.png").write_bytes(_png((6 * i, 255 - 6 * i, 90)))
        rows.append((f"img/good{i}.png", f"a colour swatch number {i}."))
    good = _png()
    damaged = {
        "truncated.png": good[: len(good) // 2],
        "zero.png": b"",
        "text.png": b"this is not an image at all\n",
        "bomb.png": _bomb(),
    }
    for name, content in damaged.items():
        (images / name).write_bytes(content)
    (images / "folder.png").mkdir()
    rows += [(f"img/{name}", f"damaged {name}.") for name in [*damaged, "folder.png"]]
    rows += [
        ("img/missing.png", "no such file."),
        ("img/good0.png", ""),
        ("img/good1.png", "   "),
        ("img/good2.png", "x" * 1_000_000),  # huge: truncated by the tokenizer, not a bad row
        ("img/good3.png", "ctrl \x00\x01\x1b[31m and emoji \U0001f600 and rtl \u202e."),
        ("", "no image path."),
    ]
    path = tmp_path / "hostile.tsv"
    path.write_text("image\tcaption\n" + "".join(f"{i}\t{c}\n" for i, c in rows), encoding="utf-8")
    return path


def test_every_damaged_row_is_a_bad_record_and_the_odd_captions_are_not(hostile_manifest):
    source = ManifestSource(hostile_manifest)
    dataset = ContrastiveDataset(source, {"image": ImageTransform(size=16), "text": TextTransform()})
    bad = {i: item.reason for i in range(len(dataset)) if isinstance(item := dataset[i], BadRecord)}
    damaged = ("truncated.png", "zero.png", "text.png", "bomb.png", "folder.png", "missing.png")
    expected = set()
    for i in range(len(source)):
        path, caption = source[i]["image"], source[i]["text"]
        if not path or not caption.strip() or path.rsplit("/", 1)[-1] in damaged:
            expected.add(i)
    assert len(expected) == 9
    assert set(bad) == expected  # the huge and the control-character captions are used
    named = {source[i]["image"].rsplit("/", 1)[-1]: i for i in bad if source[i]["image"]}
    assert "bomb" in bad[named["bomb.png"]].lower() or "pixels" in bad[named["bomb.png"]]


def test_training_skips_and_counts_the_bad_rows(hostile_manifest, tmp_path, capsys):
    out = tmp_path / "run"
    data = ["--set", f"data.train={{manifest: {hostile_manifest}}}", "--set", "data.eval=null"]
    assert main(["train", *RUN, *data, "--set", "data.max_bad_fraction=0.5", "--out", str(out)]) == 0
    issues = (out / "data_issues.txt").read_text()
    assert "bad record(s) skipped" in issues
    assert (out / "checkpoints").is_dir()
    capsys.readouterr()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"image\tcaption\nimg/a.png\t\xff\xfe broken \x81\n", "UTF-8"),
        (b"", "no data rows"),
        (b"image\tcaption\n", "no data rows"),
        (b"picture\tdescription\na.png\tx\n", "no modality column"),
        (b"\x89PNG\r\n\x1a\n\x00\x00binary", "UTF-8"),
    ],
)
def test_an_unreadable_manifest_is_one_line(content, message, tmp_path, capsys):
    path = tmp_path / "m.tsv"
    path.write_bytes(content)
    data = ["--set", f"data.train={{manifest: {path}}}", "--set", "data.eval=null"]
    err = one_line_error(["train", *RUN, *data, "--out", str(tmp_path / "r")], capsys)
    assert message in err and str(path) in err


def test_a_manifest_missing_the_modelled_column_names_it(tmp_path, capsys):
    path = tmp_path / "texts.jsonl"
    path.write_text('{"text": "only captions"}\n' * 8)
    data = ["--set", f"data.train={{manifest: {path}}}", "--set", "data.eval=null"]
    err = one_line_error(["train", *RUN, *data, "--out", str(tmp_path / "r")], capsys)
    assert "image" in err


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.one_of(st.binary(max_size=300), st.binary(max_size=60).map(lambda b: _png()[:24] + b)))
def test_any_bytes_as_an_image_are_decoded_or_reported(content):
    dataset = ContrastiveDataset(ListSource([{"image": content}]), {"image": ImageTransform(size=16)})
    item = dataset[0]
    if isinstance(item, BadRecord):
        assert item.reason
    else:
        assert item["image"].shape == (3, 16, 16) and torch.isfinite(item["image"]).all()


@settings(max_examples=100, deadline=None)
@given(caption=st.text(max_size=400))
def test_any_text_as_a_caption_is_tokenized_or_reported(caption):
    dataset = ContrastiveDataset(ListSource([{"text": caption}]), {"text": TextTransform()})
    item = dataset[0]
    if isinstance(item, BadRecord):
        assert not caption.strip() and ("empty" in item.reason or "whitespace" in item.reason)
        return
    batch = ByteTokenizer(max_length=24)([item["text"]])
    assert all(v.shape[-1] <= 24 for v in batch.values())


def test_a_manifest_row_with_a_huge_cell_is_read(tmp_path):
    path = tmp_path / "big.tsv"
    path.write_text("image\tcaption\na.png\t" + "word " * 200_000 + "\n")
    assert len(ManifestSource(path)[0]["text"]) == 1_000_000
