"""CSV files are read by the csv module as a stream: cells of any length up to the line bound,
quoted cells holding newlines, form feeds or U+2028 stay one cell, and every `file:line` is the
line the row starts on in the file."""

from __future__ import annotations

import csv
import io

import pytest

from runner.data.readers import MAX_LINE_BYTES, load_rows
from runner.errors import DataError

# Characters str.splitlines() takes for line breaks that are not line breaks in a CSV file.
NOT_NEWLINES = "\f\v\x1c\x1d\x1e\x85\u2028\u2029"


def _write(path, rows, newline="\n"):
    buf = io.StringIO(newline="")
    csv.writer(buf, lineterminator=newline).writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8", newline="")
    return buf.getvalue()


def test_a_cell_over_128_kib_is_read_whole(tmp_path):
    long = "word " * 60_000  # 300 KB, over the csv module's default 128 KiB cell limit
    path = tmp_path / "long.csv"
    _write(path, [["instruction", "output"], ["Say a lot", long], ["Say hi", "Hi"]])
    loaded = load_rows({"path": str(path), "format": "alpaca"})
    assert [r["messages"][-1]["content"] for r in loaded.rows] == [long, "Hi"]


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_form_feeds_and_unicode_separators_stay_in_their_cell_and_lines_are_exact(tmp_path, newline):
    odd = "a" + "b".join(NOT_NEWLINES) + "c"
    path = tmp_path / "odd.csv"
    text = _write(path, [["instruction", "output"],
                         ["plain", f"unquoted {odd}"],          # line 2
                         ["two\nlines", "quoted"],             # lines 3-4
                         ["x", "y", "z"],                      # line 5: wrong column count
                         [f"{odd}\n{odd}", "ok"],              # lines 6-7
                         ["a", "b", "c", "d"]], newline)       # line 8: wrong column count
    assert "\f" in text and "\u2028" in text
    with pytest.raises(DataError) as err:
        load_rows({"path": str(path), "format": "alpaca"})
    message = str(err.value)
    assert f"{path}:5: expected 2 columns, found 3" in message
    assert f"{path}:8: expected 2 columns, found 4" in message
    assert "2 malformed row(s)" in message
    kept = load_rows({"path": str(path), "format": "alpaca", "on_bad_row": "skip"})
    assert kept.origins == [f"{path}:2", f"{path}:3", f"{path}:6"]
    outputs = [r["messages"][-1]["content"] for r in kept.rows]
    assert outputs == [f"unquoted {odd}", "quoted", "ok"]
    assert kept.rows[2]["messages"][0]["content"] == f"{odd}\n{odd}"


def test_not_utf8_names_its_line(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("instruction,output\nhi,ho\nça,va\n".encode("utf-8") + "été,oui\n".encode("latin-1"))
    with pytest.raises(DataError) as err:
        load_rows({"path": str(path), "format": "alpaca"})
    assert f"{path}:4: not UTF-8" in str(err.value)


def test_a_cell_over_the_line_bound_stops_with_its_line(tmp_path):
    path = tmp_path / "huge.csv"
    with open(path, "w") as f:
        f.write('instruction,output\nhi,ho\nbig,"')
        block = "x" * 2**20
        for _ in range(MAX_LINE_BYTES // 2**20 + 1):
            f.write(block)
        f.write('"\nlast,row\n')
    with pytest.raises(DataError) as err:
        load_rows({"path": str(path), "format": "alpaca", "on_bad_row": "skip"})
    assert err.value.where == f"{path}:3" and "cannot be read from line 3 on" in str(err.value)
