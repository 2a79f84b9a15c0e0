"""Which folders another user cannot cross on the way to a path, and opening them (o+x only)."""

from __future__ import annotations

import stat
from pathlib import Path

from trainmaster.hostaccess import closed_folders, open_the_way


def test_only_the_closed_folders_on_the_way_are_opened_and_only_for_crossing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    python = home / "pyenv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("")
    aside = tmp_path / "aside"
    aside.mkdir()
    for folder in (tmp_path, home, home / "pyenv", home / "pyenv" / "bin", aside):
        folder.chmod(0o755)
    home.chmod(0o700)
    aside.chmod(0o700)
    mine = [home.resolve()]
    assert [f for f in closed_folders([python]) if f.is_relative_to(tmp_path.resolve())] == mine
    assert [f for f in open_the_way([python]) if f.is_relative_to(tmp_path.resolve())] == mine
    assert stat.S_IMODE(home.stat().st_mode) == 0o701  # crossable, still not listable
    assert stat.S_IMODE(aside.stat().st_mode) == 0o700  # not on the way: untouched
    assert closed_folders([python]) == [] and open_the_way([python]) == []


def test_a_target_folder_itself_must_be_crossable(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    tmp_path.chmod(0o755)
    work.chmod(0o700)
    assert [f for f in closed_folders([work, work]) if f.is_relative_to(tmp_path.resolve())] == [work.resolve()]
