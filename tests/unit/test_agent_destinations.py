"""Copying without following links (libs/trainmaster/safe_copy.py) and the agent's destinations
(services/executor_agent/destinations.py): roots checked again at use, folders claimed, log files
opened, all over real files in a temporary folder."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from services.executor_agent.destinations import (
    check_inputs,
    claim_destinations,
    copy_outputs,
    open_folder,
    open_log,
    resolve_roots,
)
from services.executor_agent.launch import Refused
from trainmaster import safe_copy
from trainmaster.messages import Algorithm, DataSource, JobRequest
from trainmaster.storage_roots import MARKER, Owner, read_marker

OWNER = Owner("team-a", "iris", "j2", "V002")


@pytest.fixture
def places(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "root"
    root.mkdir()
    secret = tmp_path / "secret"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    return {"root": root, "secret": secret, "tmp": tmp_path}


def output_folder(tmp: Path, secret: Path) -> Path:
    """What a job may leave in its output folder: files, folders, links out, a fifo."""
    out = tmp / "run-output"
    (out / "sub").mkdir(parents=True)
    (out / "model.bin").write_bytes(b"weights")
    (out / "sub" / "metrics.json").write_text("{}")
    (out / "setuid").write_text("x")
    (out / "setuid").chmod(0o4755)
    (out / "leak").symlink_to(secret)
    (out / "etc").symlink_to("/etc")
    (out / "sub" / "passwd").symlink_to("/etc/passwd")
    os.mkfifo(out / "fifo")
    (out / MARKER).write_bytes(Owner("team-a", "someone-else").encode())  # a forged marker
    return out


def copy(src: Path, dst: Path) -> safe_copy.CopyStats:
    dst.mkdir(parents=True, exist_ok=True)
    with safe_copy.opened(safe_copy.open_dir(src)) as s, safe_copy.opened(safe_copy.open_dir(dst)) as d:
        return safe_copy.copy_tree(s, d)


# ------------------------------------------------------------------------- safe_copy
def test_links_and_special_files_are_skipped_and_counted(places):
    out = output_folder(places["tmp"], places["secret"])
    dst = places["tmp"] / "copied"
    stats = copy(out, dst)
    assert sorted(str(p.relative_to(dst)) for p in dst.rglob("*")) == [
        MARKER, "model.bin", "setuid", "sub", "sub/metrics.json"]
    assert (stats.files, stats.links, stats.special) == (4, 3, 1)
    assert stats.skipped() == "3 symbolic links and 1 special file (device, fifo, socket)"
    assert not any(p.is_symlink() for p in dst.rglob("*"))
    assert (dst / "model.bin").read_bytes() == b"weights"
    assert stat.S_IMODE((dst / "setuid").stat().st_mode) == 0o755  # no set-user-id


def test_a_destination_file_is_replaced_not_written_through(places):
    src = places["tmp"] / "src"
    src.mkdir()
    (src / "a.txt").write_text("new")
    (src / "b.txt").write_text("new")
    dst = places["tmp"] / "dst"
    dst.mkdir()
    victim = places["tmp"] / "victim"
    victim.write_text("keep")
    os.link(victim, dst / "a.txt")  # a hard link planted in the destination
    (dst / "b.txt").symlink_to(victim)  # and a symbolic one
    copy(src, dst)
    assert victim.read_text() == "keep"
    assert (dst / "a.txt").read_text() == "new" and not (dst / "b.txt").is_symlink()


def test_regular_files_lists_without_following(places):
    out = output_folder(places["tmp"], places["secret"])
    stats = safe_copy.CopyStats()
    with safe_copy.opened(safe_copy.open_dir(out)) as fd:
        names = [name for name, _size in safe_copy.regular_files(fd, stats)]
        assert names == [MARKER, "model.bin", "setuid", "sub/metrics.json"]
        assert safe_copy.open_regular(fd, "leak") is None
        assert safe_copy.open_regular(fd, "sub/passwd") is None
    assert (stats.links, stats.special) == (3, 1)


# ------------------------------------------------------------------------- destinations
def test_outputs_go_into_an_empty_folder_and_the_marker_is_trainmasters(places):
    out = output_folder(places["tmp"], places["secret"])
    dest = places["root"] / "models" / "iris"
    roots = resolve_roots([str(places["root"])])
    stats = copy_outputs(out, dest, OWNER, roots)
    assert stats.files == 3  # the job's own marker file is not copied
    assert read_marker((dest / MARKER).read_bytes()) == OWNER
    assert "root only" not in "".join(p.read_text() for p in dest.rglob("*") if p.is_file())
    # the next version of the same job writes into its own folder again
    nxt = Owner("team-a", "iris", "j3", "V003")
    copy_outputs(out, dest, nxt, roots)
    assert read_marker((dest / MARKER).read_bytes()) == nxt


@pytest.mark.parametrize("other", [Owner("team-a", "other-job"), Owner("team-b", "iris"), None])
def test_a_folder_of_something_else_is_refused_and_left_alone(places, other):
    dest = places["root"] / "home"
    dest.mkdir()
    keys = dest / "authorized_keys"
    keys.write_text("ssh-ed25519 AAAA me\n")
    if other is not None:
        (dest / MARKER).write_bytes(other.encode())
    src = places["tmp"] / "src"
    src.mkdir()
    (src / "authorized_keys").write_text("ssh-ed25519 EVIL\n")
    with pytest.raises(Refused, match="holds files of something else: choose an empty folder"):
        copy_outputs(src, dest, OWNER, resolve_roots([str(places["root"])]))
    assert keys.read_text() == "ssh-ed25519 AAAA me\n"


def test_a_link_on_the_way_to_a_destination_is_not_followed(places):
    elsewhere = places["tmp"] / "elsewhere"
    elsewhere.mkdir()
    (places["root"] / "out").symlink_to(elsewhere)
    roots = resolve_roots([str(places["root"])])
    # resolved, it leads out of the root
    with pytest.raises(Refused, match="outside the storage roots"):
        open_folder(places["root"] / "out" / "model", "output_path", "team-a", roots)
    # inside the root, a link is refused all the same (it may change between check and use)
    (places["root"] / "real").mkdir()
    (places["root"] / "alias").symlink_to(places["root"] / "real")
    fd = open_folder(places["root"] / "alias" / "m", "output_path", "team-a", roots)
    os.close(fd)  # resolved first: the walk goes through root/real, no link
    assert (places["root"] / "real" / "m").is_dir()


def test_destinations_nested_in_each_other_are_claimed_outer_first(places):
    out = places["root"] / "out"
    roots = resolve_roots([str(places["root"])])
    claim_destinations([("log_path", out / "logs"), ("output_path", out)], OWNER, roots)
    claim_destinations([("output_path", out / "inner"), ("log_path", out / "logs")], OWNER, roots)
    assert read_marker((out / MARKER).read_bytes()) == OWNER


def test_a_log_file_is_never_opened_through_a_link_or_a_hard_link(places):
    logs = places["root"] / "logs"
    logs.mkdir()
    (logs / MARKER).write_bytes(OWNER.encode())
    roots = resolve_roots([str(places["root"])])
    (logs / "iris-V002-node0.log").symlink_to(places["secret"])
    with pytest.raises(Refused, match="cannot open"):
        open_log(logs / "iris-V002-node0.log", OWNER, roots)
    os.link(places["secret"], logs / "iris-V002-node1.log")
    with pytest.raises(Refused, match="hard link"):
        open_log(logs / "iris-V002-node1.log", OWNER, roots)
    with open_log(logs / "iris-V002-node2.log", OWNER, roots) as f:
        f.write(b"line\n")
    assert places["secret"].read_text() == "root only\n"
    with pytest.raises(Refused, match="outside the storage roots"):
        open_log(places["tmp"] / "iris.log", OWNER, roots)


def test_inputs_are_checked_as_given(places):
    roots = resolve_roots([str(places["root"])])
    code = places["root"] / "code"
    code.mkdir()
    spec = JobRequest(name="iris", account="team-a", data=[DataSource(path=str(places["root"]))],
                      algorithm=Algorithm(source="framework", code_dir=str(code), boot_file="train.py"))
    check_inputs(spec, roots)
    with pytest.raises(Refused, match=r"data\[0\].path /etc .*outside the storage roots of project team-a"):
        check_inputs(JobRequest(account="team-a", data=[DataSource(path="/etc")]), roots)
    (code / "up").symlink_to(places["tmp"])
    escaping = JobRequest(account="team-a", data=[DataSource(path=str(code))],
                          algorithm=Algorithm(source="framework", code_dir=str(code), boot_file="up/secret"))
    with pytest.raises(Refused, match=r"algorithm\.boot_file"):
        check_inputs(escaping, roots)


async def test_a_local_download_checks_the_file_it_actually_opened(places):
    from trainmaster.settings import Settings
    from trainmaster.storage import ObjectInfo, Storage, StorageError

    src = places["root"] / "data"
    src.mkdir()
    (src / "ok.csv").write_text("a\n")
    (src / "swapped.csv").symlink_to(places["secret"])  # listed as a file, a link by the time it is read
    roots = resolve_roots([str(places["root"])])

    def allowed(real: str) -> bool:
        return real.startswith(roots[0] + "/")

    storage = Storage(Settings())
    await storage.download(str(src), places["tmp"] / "a", files=[ObjectInfo("ok.csv", 2)], allowed=allowed)
    with pytest.raises(StorageError, match="outside the storage roots"):
        await storage.download(str(src), places["tmp"] / "b", files=[ObjectInfo("swapped.csv", 10)], allowed=allowed)
    assert not (places["tmp"] / "b" / "swapped.csv").exists()
