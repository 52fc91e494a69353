"""The progress bar: one redrawn line on a TTY, a line every 10% elsewhere."""

from __future__ import annotations

import io

from appliance.progress import ProgressBar, TerminalProgress, format_line

MIB = 1024 * 1024


def test_format_line() -> None:
    line = format_line("converting disk", 5 * MIB, 10 * MIB, 2.0, width=10)
    assert line.startswith("converting disk [#####-----]  50.0%")
    assert "5.0/10.0 MiB" in line
    assert line.endswith("2.5 MiB/s")
    assert "[----------]   0.0%" in format_line("x", 0, 10, 0.0, width=10)
    assert "100.0%" in format_line("x", 20, 10, 1.0)  # clamped
    assert "100.0%" in format_line("x", 0, 0, 1.0)  # an empty step is complete


def test_non_tty_prints_every_ten_percent() -> None:
    out = io.StringIO()
    bar = ProgressBar("hashing", out, tty=False)
    for done in range(0, 1001):
        bar(done, 1000)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 11
    assert [line.split("]")[1].split("%")[0].strip() for line in lines] == [
        f"{p}.0" for p in range(0, 101, 10)
    ]
    assert "\r" not in out.getvalue()


def test_tty_redraws_one_line() -> None:
    out = io.StringIO()
    with ProgressBar("packing", out, tty=True) as bar:
        bar(0, 100)
        bar(100, 100)
    text = out.getvalue()
    assert text.startswith("\rpacking [")
    assert text.endswith("\n") and text.count("\n") == 1
    assert "100.0%" in text.rsplit("\r", 1)[1]


def test_phases_start_new_bars() -> None:
    out = io.StringIO()
    with TerminalProgress(out, tty=False) as progress:
        progress("converting disk", 0, 10)
        progress("converting disk", 10, 10)
        progress("packing OVA", 10, 10)
    lines = out.getvalue().splitlines()
    assert [line.split(" [")[0] for line in lines] == ["converting disk", "converting disk", "packing OVA"]
