"""Progress: a bar on a terminal, plain periodic lines in a log (mskd.progress)."""

from __future__ import annotations

import io
import sys

import pytest

from mskd.progress import interactive, with_progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    "stdout_tty, stderr_tty, rank, expected",
    [(True, True, None, True), (True, True, "0", True), (True, True, "1", False), (False, True, None, False)]
    + [(True, False, None, False)],
)
def test_interactive_needs_two_terminals_and_rank_0(stdout_tty, stderr_tty, rank, expected, monkeypatch):
    monkeypatch.setattr(sys, "stdout", _Terminal() if stdout_tty else io.StringIO())
    monkeypatch.setattr(sys, "stderr", _Terminal() if stderr_tty else io.StringIO())
    if rank is None:
        monkeypatch.delenv("RANK", raising=False)
    else:
        monkeypatch.setenv("RANK", rank)
    assert interactive() is expected


@pytest.mark.parametrize(
    "total, lines, printed",
    [(10, 5, [2, 4, 6, 8, 10]), (7, 3, [3, 6, 7]), (2, 10, [1, 2]), (3, 1, [3])],
)
def test_plain_lines_at_even_steps_and_at_the_end(total, lines, printed, capsys):
    assert list(with_progress(range(total), total, "phantom", unit="case", bar=False, lines=lines)) == list(
        range(total)
    )
    out = capsys.readouterr().out.splitlines()
    assert [int(line.split()[1].split("/")[0]) for line in out] == printed
    assert all(line.startswith("phantom: ") and f"/{total} cases (" in line for line in out)


def test_bar_on_a_terminal(capsys):
    assert list(with_progress(range(3), 3, "phantom", unit="case", bar=True)) == [0, 1, 2]
    captured = capsys.readouterr()
    assert captured.out == "" and "phantom: 100%" in captured.err and "3/3" in captured.err
