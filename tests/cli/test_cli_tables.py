"""The CLI's tables: laid out by gpuq when they fit, by rich when not, the same text as rich
lays out either way (``gpuq q`` and ``gpuq show`` print tables without importing rich)."""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from gpuq.cli.render import Table, plain_table, render

ASCII = st.text(alphabet=string.printable.strip() + " ", max_size=12)


@st.composite
def tables(draw: st.DrawFn, cells: st.SearchStrategy[str] = ASCII) -> Table:
    n = draw(st.integers(1, 6))
    table = plain_table(*draw(st.lists(ASCII.filter(bool), min_size=n, max_size=n)))
    for column in table.columns:
        column.justify = draw(st.sampled_from(["left", "right"]))
    for _ in range(draw(st.integers(0, 5))):
        table.add_row(*draw(st.lists(cells, min_size=n, max_size=n)))
    return table


@settings(max_examples=300, deadline=None)
@given(tables(), st.integers(20, 120), st.sampled_from([0, 2]))
def test_the_same_text_as_rich(table: Table, width: int, indent: int) -> None:
    lines = table.plain_lines(width - indent)
    if lines is not None:
        assert lines == table.rich_lines(width - indent)
    pad = " " * indent
    assert render(table, width=width, indent=indent) == "\n".join(
        pad + line.rstrip() for line in table.rich_lines(max(20, width - indent)))


@settings(max_examples=100, deadline=None)
@given(tables(st.text(max_size=8)))
def test_any_text_is_left_to_rich(table: Table) -> None:
    """Tabs, line breaks, wide and combining characters: rich knows their widths."""
    assert render(table, width=100_000) == "\n".join(
        line.rstrip() for line in table.rich_lines(100_000))


def test_what_is_laid_out_here() -> None:
    table = plain_table("ID", "NAME", "N")
    table.columns[2].justify = "right"
    table.add_row("1", "train", "10")
    table.add_row("22", None, "3")
    assert table.plain_lines(80) == ["ID  NAME    N", "1   train  10", "22          3"]
    assert table.plain_lines(12) is None  # 13 columns wide: rich folds it
    table.add_row("3", "caf\u00e9", "1")
    assert table.plain_lines(80) is None
