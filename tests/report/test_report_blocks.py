"""``write_block``: the experiments' tables inside hand-written Markdown."""

from __future__ import annotations

from contrastkit.report.blocks import write_block

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
