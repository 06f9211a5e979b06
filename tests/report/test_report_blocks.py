"""``write_block`` (the experiments' tables inside hand-written Markdown) and the table cells
and gain test the experiments share."""

from __future__ import annotations

import time

import pytest

from contrastkit.report.blocks import clear_gain, format_metrics, mean_std, print_progress, write_block

BEGIN, END = "<!-- t:begin -->", "<!-- t:end -->"


def test_only_the_marked_block_is_replaced(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text(f"intro\n{BEGIN}\nold\n{END}\nafter\n", encoding="utf-8")
    write_block(doc, BEGIN, END, "new table")
    assert doc.read_text(encoding="utf-8") == f"intro\n{BEGIN}\nnew table\n{END}\nafter\n"
    write_block(doc, BEGIN, END, "newer")
    assert doc.read_text(encoding="utf-8") == f"intro\n{BEGIN}\nnewer\n{END}\nafter\n"


def test_a_file_without_markers_gets_the_block_appended(tmp_path):
    doc = tmp_path / "sub" / "doc.md"
    write_block(doc, BEGIN, END, "t")
    assert doc.read_text(encoding="utf-8") == f"{BEGIN}\nt\n{END}\n"
    doc.write_text("text", encoding="utf-8")
    write_block(doc, BEGIN, END, "t")
    assert doc.read_text(encoding="utf-8") == f"text\n{BEGIN}\nt\n{END}\n"


def test_mean_std_cells():
    assert mean_std([1.0, 2.0, 3.0], 2) == "2.00 ± 1.00"  # sample std
    assert mean_std([0.5], 1) == "0.5"
    assert mean_std([], 3) == "–" and mean_std([1.0, float("nan")]) == "–"


def test_clear_gain_needs_two_standard_errors_and_the_floor():
    a, b = [1.0, 1.2, 1.4], [0.0, 0.2, 0.4]  # gain 1.0, 2 SE = 2 * sqrt(0.04/3 + 0.04/3) = 0.327
    assert clear_gain(a, b, 0.1) == (pytest.approx(1.0), True)
    assert clear_gain(a, b, 1.5)[1] is False  # the floor binds
    noisy = [0.0, 2.0, 4.0]  # gain 1.0 over [0, 1, 2], but 2 SE = 2 * sqrt(4/3 + 1/3) = 2.58
    assert clear_gain(noisy, [0.0, 1.0, 2.0], 0.0) == (pytest.approx(1.0), False)
    assert clear_gain([0.3], [0.1], 0.1) == (pytest.approx(0.2), True)  # one seed: the floor alone


def test_progress_lines_show_elapsed_time_metrics_note_and_run_time(capsys):
    assert format_metrics({"acc": 0.5, "auroc": 0.12345}) == "acc 0.500, auroc 0.123"
    now = time.time()
    print_progress(now - 12.0, "arm seed 0", {"acc": 0.5}, since=now - 3.0, note="; extra")
    print_progress(now, "arm seed 1", {})
    first, second = capsys.readouterr().out.splitlines()
    assert first.startswith("[  12.") and first.endswith("s] arm seed 0: acc 0.500; extra (3s)")
    assert second.startswith("[   0.") and second.endswith("s] arm seed 1: ")
