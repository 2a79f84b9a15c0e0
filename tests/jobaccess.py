"""What the job user needs of this test host, so that real jobs run by a real agent can work.

The tests run as root, so their agents run jobs as the unprivileged job user (``tm-job``).  That
user must reach the interpreter jobs run under and every file a test hands a job (code, data, the
agent's work folder), and two things of a test host are private to root:

- pytest's temporary folders (``/tmp/pytest-of-root`` and everything under it: 0700, and made 0700
  again by every pytest session that starts, so changing their mode would race other sessions).
  ``use_reachable_basetemp`` gives the session a base folder of its own under
  ``/tmp/tm-tests`` instead, and makes the folders pytest creates there crossable
  (0711: not listable) by other users.
- root's home, where pyenv keeps the Python these tests run under (``/root`` is 0700).
  ``let_others_reach_python`` makes the folders on the way to the interpreter crossable (o+x); an
  agent whose job user cannot run its Python refuses to start, saying so.

Nothing changes for a session that does not run as root.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from trainmaster.hostaccess import open_the_way, python_paths

ROOT = Path(tempfile.gettempdir()) / "tm-tests"  # short: some tests see paths in wrapped messages
CROSSABLE = 0o711
KEEP_FAILED_S = 24 * 3600  # a failed session's folder stays a day for a look, then goes


def let_others_reach_python() -> None:
    open_the_way(python_paths())


def _crossable(path: Path) -> Path:
    path.chmod(CROSSABLE)
    return path


def use_reachable_basetemp(config: pytest.Config) -> None:
    """Before pytest's tmpdir plugin reads it: a fresh base folder for this session."""
    if config.option.basetemp is not None:
        return
    ROOT.mkdir(exist_ok=True)
    ROOT.chmod(CROSSABLE)
    for old in ROOT.iterdir():  # sessions that failed long ago
        if old.is_dir() and time.time() - old.stat().st_mtime > KEEP_FAILED_S:
            shutil.rmtree(old, ignore_errors=True)
    config.option.basetemp = tempfile.mkdtemp(prefix="s", dir=ROOT)


def make_created_folders_crossable(config: pytest.Config) -> None:
    """After the tmpdir plugin: what it creates (0700) becomes 0711."""
    factory = config._tmp_path_factory  # type: ignore[attr-defined]  # tmp_path and tmp_path_factory use this one
    getbasetemp, mktemp = factory.getbasetemp, factory.mktemp
    factory.getbasetemp = lambda: _crossable(getbasetemp())
    factory.mktemp = lambda basename, numbered=True: _crossable(mktemp(basename, numbered))


def forget_passed_session(session: pytest.Session, exitstatus: int) -> None:
    basetemp = session.config.option.basetemp
    if exitstatus == 0 and basetemp and Path(basetemp).parent == ROOT:
        shutil.rmtree(basetemp, ignore_errors=True)


def needed() -> bool:
    return os.geteuid() == 0
