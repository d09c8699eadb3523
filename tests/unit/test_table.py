"""The one table formatter every CLI listing uses."""

from __future__ import annotations

import pytest

from webgateway.table import format_table


def test_columns_align_numbers_right_and_missing_cells_dash() -> None:
    out = format_table(
        ["NAME", "DAYS", "ISSUER"],
        [["zone", 60, "Pebble Intermediate CA"], ["shop.example.org", None, ""], ["x", 7, "E5"]],
    )
    assert out.splitlines() == [
        "NAME              DAYS  ISSUER",
        "zone                60  Pebble Intermediate CA",
        "shop.example.org     -  -",
        "x                    7  E5",
    ]


def test_empty_and_ragged() -> None:
    assert format_table(["A", "B"], []) == "A  B"
    with pytest.raises(ValueError, match="1 cells for 2 columns"):
        format_table(["A", "B"], [["only"]])
    assert format_table(["FLAG"], [[True]]) == "FLAG\nTrue"  # bools are not numbers
    assert format_table(["DETAIL", "X"], [[None, "a"]]) == "DETAIL  X\n-       a"  # blanks: left
