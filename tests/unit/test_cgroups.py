"""The cgroup layer's pure parts (reading /proc, paths, limits, OOM counters) and its writes against
a fake cgroupfs folder tree, for v2 and v1 layouts; the node's outcome when its group ran out of
memory; the run folder's size for the disk watchdog; pre-exec steps in order."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from services.executor_agent.launch import outcome
from services.executor_agent.runner import folder_bytes
from trainmaster.cgroups import (
    AGENT_LEAF,
    CgroupHost,
    CgroupsUnavailable,
    Hierarchy,
    Layout,
    Limits,
    Write,
    agent_base,
    detect_layout,
    limit_writes,
    node_dirs,
    node_limits,
    node_name,
    oom_kills,
    oom_reason,
    parse_mountinfo,
    parse_proc_cgroup,
    subtree_controls,
    tree_name,
)
from trainmaster.containers import podman_run_argv
from trainmaster.procs import preexec_steps

# this project's machines: v1 hierarchies, a v2 mount with only hugetlb (hybrid)
HYBRID_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
HYBRID_CGROUP = """\
8:pids:/
6:freezer:/
4:memory:/sandbox/abc
1:cpu:/
0::/
"""
V2_MOUNTINFO = "29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n"
V2_CGROUP = "0::/system.slice/tm-agent.service\n"


def controllers(offered: dict[str, str]):  # type: ignore[no-untyped-def]
    def read(path: Path) -> str:
        if str(path) not in offered:
            raise FileNotFoundError(2, "No such file or directory")
        return offered[str(path)]
    return read


# ------------------------------------------------------------------------------ reading /proc
def test_proc_cgroup_lines_become_controller_paths() -> None:
    groups = parse_proc_cgroup("4:memory:/a/b\n2:cpu,cpuacct:/\n9:name=systemd:/init.scope\n0::/x/y\n")
    assert groups["memory"] == "a/b" and groups["cpu"] == "" and groups["cpuacct"] == ""
    assert groups[""] == "x/y" and groups["name=systemd"] == "init.scope"


def test_mountinfo_yields_only_cgroup_mounts() -> None:
    mounts = parse_mountinfo(HYBRID_MOUNTINFO)
    assert [m[0] for m in mounts] == ["cgroup"] * 5 + ["cgroup2"]
    assert mounts[2][1] == Path("/sys/fs/cgroup/memory") and "memory" in mounts[2][3]


def test_v2_is_chosen_where_it_offers_cpu_memory_and_pids() -> None:
    read = controllers({"/sys/fs/cgroup/system.slice/tm-agent.service/cgroup.controllers": "cpuset cpu io memory pids"})
    layout = detect_layout(V2_MOUNTINFO, V2_CGROUP, read)
    assert layout.version == 2
    assert layout.hierarchies["memory"] == Hierarchy(Path("/sys/fs/cgroup"), "system.slice/tm-agent.service")


def test_a_hybrid_host_uses_its_v1_hierarchies() -> None:
    read = controllers({"/sys/fs/cgroup/unified/cgroup.controllers": "hugetlb"})
    layout = detect_layout(HYBRID_MOUNTINFO, HYBRID_CGROUP, read)
    assert layout.version == 1
    assert layout.hierarchies["memory"] == Hierarchy(Path("/sys/fs/cgroup/memory"), "sandbox/abc")
    assert layout.hierarchies["freezer"].own == ""
    assert set(layout.hierarchies) == {"cpu", "memory", "pids", "freezer"}


def test_no_usable_cgroups_says_why() -> None:
    with pytest.raises(CgroupsUnavailable, match="lacks cpu, pids"):
        detect_layout(V2_MOUNTINFO, V2_CGROUP,
                      controllers({"/sys/fs/cgroup/system.slice/tm-agent.service/cgroup.controllers": "memory io"}))
    with pytest.raises(CgroupsUnavailable, match="no cgroup v1 hierarchy for pids"):
        detect_layout(HYBRID_MOUNTINFO.replace("rw,pids", "rw,net_cls"), HYBRID_CGROUP, controllers({}))


def test_a_bind_mounted_subtree_is_read_relative_to_its_root() -> None:
    mountinfo = "40 31 0:32 /sandbox /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n" + HYBRID_MOUNTINFO
    layout = detect_layout(mountinfo, HYBRID_CGROUP, controllers({}))
    assert layout.hierarchies["memory"].own == "abc"


# ------------------------------------------------------------------------------ paths and limits
def v2_layout(root: Path, own: str) -> Layout:
    return Layout(2, dict.fromkeys(("cpu", "memory", "pids"), Hierarchy(root, own)))


def v1_layout(root: Path) -> Layout:
    return Layout(1, {c: Hierarchy(root / c, "sandbox" if c == "memory" else "") for c in
                      ("cpu", "memory", "pids", "freezer")})


def test_v2_agent_moves_into_a_leaf_once() -> None:
    assert agent_base(Hierarchy(Path("/c"), "system.slice/a.service"), 2) == (
        "system.slice/a.service", f"system.slice/a.service/{AGENT_LEAF}")
    # started again inside the leaf: its parent is the base, no further leaf
    assert agent_base(Hierarchy(Path("/c"), f"system.slice/a.service/{AGENT_LEAF}"), 2) == (
        "system.slice/a.service", None)
    assert agent_base(Hierarchy(Path("/c"), "x"), 1) == ("x", None)
    assert agent_base(Hierarchy(Path("/c"), ""), 2) == ("", None)


def test_node_groups_sit_in_the_agents_tree_under_its_own_group() -> None:
    tree = tree_name("a1", Path("/var/lib/tm/agents/a1"))
    assert tree.startswith("a1-") and tree == tree_name("a1", Path("/var/lib/tm/agents/a1"))
    assert tree != tree_name("a1", Path("/tmp/other"))
    name = node_name("job-1", 2, 0)
    assert name == "job-1-a2-n0"
    v2 = node_dirs(v2_layout(Path("/c"), "s/a.service"), tree, name)
    assert set(v2.values()) == {Path(f"/c/s/a.service/trainmaster/{tree}/{name}")}
    v1 = node_dirs(v1_layout(Path("/c")), tree, name)
    assert v1["memory"] == Path(f"/c/memory/sandbox/trainmaster/{tree}/{name}")
    assert v1["pids"] == Path(f"/c/pids/trainmaster/{tree}/{name}")
    assert subtree_controls(v1_layout(Path("/c")), tree) == []
    assert [p.parent for p in subtree_controls(v2_layout(Path("/c"), "s"), tree)] == [
        Path("/c/s"), Path("/c/s/trainmaster"), Path(f"/c/s/trainmaster/{tree}")]


def test_flavor_limits_as_cgroup_values() -> None:
    limits = node_limits(2.0, 4096, 4096)
    assert limits == Limits(200_000, 4096 * 1024**2, 4096, 100_000)
    assert node_limits(0.5, None, 64).cpu_quota_us == 50_000
    assert node_limits(None, None, 64) == Limits(None, None, 64)
    assert limit_writes(2, limits) == [
        Write("cpu", "cpu.max", "200000 100000"), Write("pids", "pids.max", "4096"),
        Write("memory", "memory.max", str(4096 * 1024**2)), Write("memory", "memory.swap.max", "0", optional=True)]
    assert limit_writes(2, Limits(None, None, 64)) == [Write("cpu", "cpu.max", "max 100000"),
                                                      Write("pids", "pids.max", "64")]
    v1 = limit_writes(1, limits)
    assert [w.file for w in v1] == ["cpu.cfs_period_us", "cpu.cfs_quota_us", "pids.max", "memory.limit_in_bytes",
                                    "memory.memsw.limit_in_bytes"]
    assert v1[1].value == "200000" and v1[4].optional
    assert limit_writes(1, Limits(None, None, 64))[1].value == "-1"


def test_oom_counters_and_reason() -> None:
    assert oom_kills(2, "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n") == 1
    assert oom_kills(2, "low 0\n") == 0
    assert oom_kills(1, "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n") == 2
    assert oom_kills(1, "oom_kill_disable 0\nunder_oom 0\n") is None  # a kernel before 4.13
    assert oom_reason(1024**3) == "out of memory: the node used its flavor's 1 GiB (memory.max)"
    assert oom_reason(512 * 1024**2) == "out of memory: the node used its flavor's 0.5 GiB (memory.max)"


def test_an_out_of_memory_node_exits_137_with_the_reason() -> None:
    reason = oom_reason(1024**3)
    assert outcome(-9, None, None, None, out_of_memory=reason) == (137, reason)
    # a child was killed and the script failed on it: still the memory's doing
    assert outcome(1, None, None, "BrokenPipe", out_of_memory=reason) == (137, reason)
    # a script that survived the loss of a child succeeded
    assert outcome(0, None, None, None, out_of_memory=reason) == (0, None)
    assert outcome(-15, "stopped: user", None, None, out_of_memory=reason) == (143, "stopped: user")


# ------------------------------------------------------------------------------ writes on a fake tree
def fake_files(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text("")


def test_v1_group_gets_its_limits_and_skips_what_the_kernel_lacks(tmp_path: Path) -> None:
    host = CgroupHost(v1_layout(tmp_path), "a1-x")
    group = host.group("job-a1-n0", node_limits(1.0, 1024, 64))
    group.create()
    assert group.read("cpu", "cpu.cfs_quota_us") == "100000" and group.read("pids", "pids.max") == "64"
    assert group.read("memory", "memory.limit_in_bytes") == str(1024**3)
    assert not (group.dirs["memory"] / "memory.memsw.limit_in_bytes").exists()  # no swap accounting
    assert group.join_files == [str(tmp_path / c / ("sandbox" if c == "memory" else "") / "trainmaster/a1-x/job-a1-n0"
                                    / "tasks") for c in ("cpu", "memory", "pids", "freezer")]
    assert host.leftovers() == ["job-a1-n0"]
    # the real kernel makes these files itself; here they are created empty and removed by hand
    for folder in group.folders:
        for file in folder.iterdir():
            file.unlink()
    assert group.remove() and host.leftovers() == []
    host.close()
    assert not (tmp_path / "pids/trainmaster/a1-x").exists()


def test_v1_memsw_is_set_where_swap_is_accounted(tmp_path: Path) -> None:
    host = CgroupHost(v1_layout(tmp_path), "a1-x")
    group = host.group("n", node_limits(1.0, 1024, 64))
    fake_files(group.dirs["memory"], "memory.memsw.limit_in_bytes")
    group.create()
    assert group.read("memory", "memory.memsw.limit_in_bytes") == str(1024**3)


def test_oom_is_read_from_the_groups_counters(tmp_path: Path) -> None:
    group = CgroupHost(v1_layout(tmp_path), "t").group("n", node_limits(1.0, 1024, 64))
    fake_files(group.dirs["memory"])
    (group.dirs["memory"] / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
    assert not group.oom_killed()
    (group.dirs["memory"] / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
    assert group.oom_killed()
    v2 = CgroupHost(v2_layout(tmp_path, "s"), "t").group("n", node_limits(1.0, 1024, 64))
    fake_files(v2.dirs["memory"])
    (v2.dirs["memory"] / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert v2.oom_killed()
    # no memory limit, no OOM of ours
    assert not CgroupHost(v2_layout(tmp_path, "s"), "t").group("n", node_limits(1.0, None, 64)).oom_killed()


def test_v2_tree_moves_the_agent_and_hands_down_the_controllers(tmp_path: Path) -> None:
    fake_files(tmp_path / "s", "cgroup.subtree_control")
    layout = v2_layout(tmp_path, "s")
    host = CgroupHost(layout, "a1-x")
    host._make_tree()
    assert (tmp_path / "s" / AGENT_LEAF / "cgroup.procs").read_text() == "0"
    for control in subtree_controls(layout, "a1-x"):
        assert control.read_text() == "+cpu +memory +pids"
    group = host.group("job-a1-n0", node_limits(2.0, 2048, 100))
    fake_files(group.dirs["cpu"], "memory.swap.max")
    group.create()
    assert group.read("cpu", "cpu.max") == "200000 100000" and group.read("memory", "memory.swap.max") == "0"
    assert group.folders == [tmp_path / "s/trainmaster/a1-x/job-a1-n0"]
    assert group.join_files == [str(tmp_path / "s/trainmaster/a1-x/job-a1-n0/cgroup.procs")]


def test_an_empty_group_is_killed_at_once(tmp_path: Path) -> None:
    group = CgroupHost(v1_layout(tmp_path), "t").group("n", node_limits(1.0, 1024, 64))
    fake_files(group.dirs["freezer"], "cgroup.procs")
    fake_files(group.dirs["pids"], "cgroup.procs")
    assert asyncio.run(group.kill()) == []


# ------------------------------------------------------------------------------ disk, spawn, podman
def test_the_run_folder_size_leaves_out_inputs_and_links(tmp_path: Path) -> None:
    (tmp_path / "input").mkdir()
    (tmp_path / "input" / "data.bin").write_bytes(os.urandom(64 * 1024))
    (tmp_path / "output" / "deep").mkdir(parents=True)
    (tmp_path / "output" / "deep" / "model.bin").write_bytes(os.urandom(128 * 1024))
    (tmp_path / "output" / "link").symlink_to(tmp_path / "input")
    (tmp_path / "output" / "sparse").open("wb").truncate(1024**3)  # holds nothing
    used = folder_bytes(tmp_path, frozenset({"input"}))
    assert 128 * 1024 <= used < 256 * 1024
    assert folder_bytes(tmp_path) >= used + 64 * 1024
    assert folder_bytes(tmp_path / "missing") == 0


def test_preexec_steps_run_in_order_and_skip_none() -> None:
    seen: list[str] = []
    preexec_steps(lambda: seen.append("cgroup"), None, lambda: seen.append("user"))()
    assert seen == ["cgroup", "user"]


def test_podman_gets_the_process_limit() -> None:
    argv = podman_run_argv(podman="podman", name="x", image="img", command=["true"], mounts=[], env={}, cpus=1.0,
                           memory_mb=64, network="none", pids_limit=4096)
    assert argv[argv.index("--pids-limit") + 1] == "4096"
