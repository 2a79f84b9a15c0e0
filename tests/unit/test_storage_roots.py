"""Storage roots (libs/trainmaster/storage_roots.py, the ``TM_STORAGE_ROOTS`` setting) and the
validator's ``path_not_allowed`` rule over real files: ``..``, symbolic links that lead out of a
root, and names that only start like a root."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import msgspec
import pytest

from services.validator.facts import gather, resolve_roots
from services.validator.model import DatasetFact, Facts
from services.validator.rules import check, warnings
from trainmaster.messages import Algorithm, DataSource, JobRequest
from trainmaster.settings import EXAMPLES_DIR, Settings
from trainmaster.storage_roots import MARKER, Owner, claim_of, read_marker, root_of, roots_of


# ------------------------------------------------------------------------- the pure pieces
@pytest.mark.parametrize(("path", "expected"), [
    ("/srv/team-a", "/srv/team-a"),
    ("/srv/team-a/out/model", "/srv/team-a"),
    ("/srv/team-a/", "/srv/team-a"),
    ("/srv/team-a-evil", None),  # a name that only starts like the root
    ("/srv/team-a-evil/x", None),
    ("/srv/team", None),
    ("/srv", None),
    ("/etc/passwd", None),
    ("/srv/team-b/data", "/srv/team-b/"),  # a root written with a trailing slash
])
def test_a_path_is_under_a_root_by_whole_components(path, expected):
    assert root_of(path, ["/srv/team-a", "/srv/team-b/"]) == expected


def test_the_root_slash_holds_everything():
    assert root_of("/etc", ["/"]) == "/"


def test_every_project_gets_the_shared_roots_and_its_own():
    config = {"*": ["/srv/trainmaster"], "team-a": ["/srv/team-a", "/srv/trainmaster"]}
    assert roots_of(config, "team-a") == ("/srv/trainmaster", "/srv/team-a")
    assert roots_of(config, "team-b") == ("/srv/trainmaster",)
    assert roots_of({"team-a": ["/srv/team-a"]}, "team-b") == ()


def test_a_marker_names_its_owner_and_anything_else_is_no_marker():
    owner = Owner("team-a", "iris", "j1", "V001")
    assert read_marker(owner.encode()) == owner
    for junk in (None, b"", b"{", b"[]", b'{"project": "a"}', b'{"project": 1, "name": "x"}', b"x" * 5000):
        assert read_marker(junk) is None


@pytest.mark.parametrize(("entries", "marker", "expected"), [
    ([], None, "empty"),
    ([f"{MARKER}.tmp-1"], None, "empty"),  # a node beside is writing its marker
    (["model.pkl"], None, "foreign"),
    (["authorized_keys"], None, "foreign"),
    ([MARKER], None, "foreign"),  # a marker that cannot be read is not ours
    ([MARKER, "model.pkl"], Owner("team-a", "iris", "j0", "V001"), "ours"),  # a previous version
    ([MARKER], Owner("team-a", "other-job"), "foreign"),
    ([MARKER], Owner("team-b", "iris"), "foreign"),  # the same name in another project
])
def test_a_destination_is_empty_ours_or_foreign(entries, marker, expected):
    assert claim_of(entries, marker, Owner("team-a", "iris", "j1", "V002")) == expected


# ------------------------------------------------------------------------- the setting
def test_storage_roots_come_as_json_and_default_to_data_dir_temp_and_examples(monkeypatch, tmp_path):
    monkeypatch.setenv("TM_STORAGE_ROOTS", '{"*": ["/srv/trainmaster/"], "team-a": ["/srv/team-a"]}')
    s = Settings()
    assert s.storage_roots_for("team-a") == ("/srv/trainmaster", "/srv/team-a")
    assert s.storage_roots_for("team-b") == ("/srv/trainmaster",)
    monkeypatch.delenv("TM_STORAGE_ROOTS")
    s = Settings(data_dir=tmp_path / "tm")
    expected = [str(tmp_path / "tm" / "storage"), tempfile.gettempdir()]
    assert list(s.storage_roots_for("any")) == expected + ([str(EXAMPLES_DIR)] if EXAMPLES_DIR.is_dir() else [])


@pytest.mark.parametrize("bad", ['{"*": ["relative/path"]}', '{"bad name!": ["/srv"]}', '["/srv"]'])
def test_bad_storage_roots_are_refused(monkeypatch, bad):
    monkeypatch.setenv("TM_STORAGE_ROOTS", bad)
    with pytest.raises(ValueError):
        Settings()


# ------------------------------------------------------------------------- the rule
@pytest.fixture
def roots(tmp_path: Path) -> dict[str, Path]:
    """Two roots (team-a, shared) with data, code and outputs; an outside folder; a look-alike."""
    team = tmp_path / "srv" / "team-a"
    (team / "data").mkdir(parents=True)
    (team / "data" / "iris.csv").write_text("a\n1\n")
    (team / "code").mkdir()
    (team / "code" / "train.py").write_text("print(1)\n")
    evil = tmp_path / "srv" / "team-a-evil"
    evil.mkdir()
    outside = tmp_path / "etc"
    outside.mkdir()
    (outside / "shadow").write_text("secret\n")
    return {"team": team, "evil": evil, "outside": outside}


def spec_in(team: Path, **changes) -> JobRequest:
    base = JobRequest(
        name="iris", account="team-a", data=[DataSource(path=str(team / "data"))],
        algorithm=Algorithm(source="framework", engine="scikit-learn", engine_version="1.5",
                            code_dir=str(team / "code"), boot_file=str(team / "code" / "train.py")),
        output_path=str(team / "out"), log_path=str(team / "logs"))
    return msgspec.structs.replace(base, **changes)


def checked(spec: JobRequest, root_list: list[Path], **facts) -> list[tuple[str, str]]:
    found = Facts(paths=gather(spec, facts.pop("extra", None)), roots=resolve_roots([str(r) for r in root_list]),
                  **facts)
    return [(v.field, v.code) for v in check(spec, found) if v.code == "path_not_allowed"]


def test_paths_under_the_roots_pass(roots):
    assert checked(spec_in(roots["team"]), [roots["team"]]) == []


def test_no_roots_given_means_not_checked(roots):
    spec = spec_in(roots["team"], output_path=str(roots["outside"] / "o"))
    assert [v for v in check(spec, gather(spec)) if v.code == "path_not_allowed"] == []


@pytest.mark.parametrize(("field", "change"), [
    ("data[0].path", lambda r: {"data": [DataSource(path=str(r["outside"]))]}),
    ("data[0].path", lambda r: {"data": [DataSource(path=f"{r['team']}/data/../../../etc")]}),  # ..
    ("data[0].path", lambda r: {"data": [DataSource(path=f"file://{r['outside']}")]}),
    ("output_path", lambda r: {"output_path": str(r["evil"] / "out")}),  # a look-alike of the root
    ("output_path", lambda r: {"output_path": str(r["outside"] / "new" / "deeper")}),  # not there yet
    ("log_path", lambda r: {"log_path": str(r["outside"])}),
    ("algorithm.code_dir", lambda r: {"algorithm": Algorithm(source="framework", engine="scikit-learn",
                                                              code_dir=str(r["outside"]),
                                                              boot_file=str(r["outside"] / "shadow"))}),
])
def test_a_path_outside_the_roots_is_refused_on_its_field(roots, field, change):
    got = checked(spec_in(roots["team"], **change(roots)), [roots["team"]])
    assert (field, "path_not_allowed") in got


def test_a_symbolic_link_inside_a_root_that_leads_out_is_refused(roots):
    (roots["team"] / "escape").symlink_to(roots["outside"])
    (roots["team"] / "out-link").symlink_to(roots["outside"])
    spec = spec_in(roots["team"], data=[DataSource(path=str(roots["team"] / "escape"))],
                   output_path=str(roots["team"] / "out-link" / "model"))
    assert checked(spec, [roots["team"]]) == [("data[0].path", "path_not_allowed"),
                                              ("output_path", "path_not_allowed")]
    (v,) = [v for v in check(spec, Facts(paths=gather(spec), roots=resolve_roots([str(roots["team"])])))
            if v.field == "data[0].path" and v.code == "path_not_allowed"]
    assert f"resolves to {roots['outside']}" in v.message and str(roots["team"]) in v.message
    assert "team-a" in v.message and "TM_STORAGE_ROOTS" in v.message


def test_a_root_that_is_itself_a_link_is_compared_resolved(roots, tmp_path):
    alias = tmp_path / "alias"
    alias.symlink_to(roots["team"])
    assert checked(spec_in(roots["team"]), [alias]) == []
    assert checked(spec_in(alias), [roots["team"]]) == []


def test_a_local_dataset_location_outside_the_roots_is_refused(roots):
    spec = spec_in(roots["team"], data=[DataSource(dataset="iris", version="V001")])
    location = str(roots["outside"])
    datasets = {"iris": DatasetFact(location, {})}
    assert checked(spec, [roots["team"]], extra=[location], datasets=datasets) == [
        ("data[0].dataset", "path_not_allowed")]
    inside = {"iris": DatasetFact(str(roots["team"] / "data"), {})}
    assert checked(spec, [roots["team"]], extra=[str(roots["team"] / "data")], datasets=inside) == []


def test_object_storage_is_not_a_local_path(roots):
    spec = spec_in(roots["team"], output_path="s3://bucket/out", log_path="s3://bucket/logs")
    assert checked(spec, [roots["team"]]) == []


# ------------------------------------------------------------------------- warnings
def test_a_destination_holding_foreign_files_is_warned_about(roots):
    team = roots["team"]
    (team / "out").mkdir()
    (team / "out" / "authorized_keys").write_text("ssh-ed25519 AAAA\n")
    (team / "logs").mkdir()
    (team / "logs" / "other.log").write_text("x\n")
    spec = spec_in(team)
    found = {(w.field, w.code): w.message for w in warnings(spec, gather(spec))}
    assert set(found) == {("output_path", "output_not_empty"), ("log_path", "log_path_not_empty")}
    assert "refuse" in found[("output_path", "output_not_empty")]
    # the marker of a previous version of the same job in the same project: ours
    for folder in ("out", "logs"):
        (team / folder / MARKER).write_bytes(Owner("team-a", "iris", "j0", "V001").encode())
    found = {(w.field, w.code): w.message for w in warnings(spec, gather(spec))}
    assert set(found) == {("output_path", "output_not_empty")}
    assert "refuse" not in found[("output_path", "output_not_empty")]


def test_a_marker_reached_through_a_link_is_not_read(roots):
    team = roots["team"]
    (team / "out").mkdir()
    real_marker = roots["outside"] / "marker.json"
    real_marker.write_bytes(Owner("team-a", "iris").encode())
    os.symlink(real_marker, team / "out" / MARKER)
    spec = spec_in(team)
    (w,) = warnings(spec, gather(spec))
    assert "refuse" in w.message
