"""Atomic writes: all or nothing, with the file mode any other file would get."""

from __future__ import annotations

import os

import pytest

from leanml._utils import atomic_path, atomic_write_text

from .conftest import stopped_in_a_finalizer


def test_an_interrupted_write_leaves_the_previous_file_and_no_temp_file(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_written_files_get_the_umask_mode_not_owner_only(tmp_path):
    previous = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "report.md", "x")
    finally:
        os.umask(previous)
    assert (tmp_path / "report.md").stat().st_mode & 0o777 == 0o644


def test_a_ctrl_c_dropped_in_a_finalizer_still_stops_the_program():
    setup = "from leanml._utils import redeliver_dropped_interrupts\nredeliver_dropped_interrupts()"
    assert stopped_in_a_finalizer(setup, "SIGINT") == ("stopped", "")
