"""Settings: one group per concern, read from the flat ``TM_*`` variables; each service reads only
the groups it is meant to."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from trainmaster.settings import GROUP_OF, GROUPS, Settings

ROOT = Path(__file__).resolve().parents[2]

SHARED = {"bus", "api", "storage", "catalog", "billing", "observability"}
# what each service may read: the shared groups and its own (the agent offers no API, the
# notifier bills nobody: fewer is fine, more is not)
ALLOWED = {
    "job_intake": SHARED | {"intake"},
    "validator": SHARED,
    "scheduler": SHARED | {"scheduler"},
    "executor_agent": SHARED | {"agent"},
    "notifier": SHARED | {"notifier"},
    "api_gateway": SHARED | {"http"},
}
# ``settings.<group>``, ``ctx.settings.<group>``, ``self.settings.<group>``, ``s.<group>.``
GROUP_READ = re.compile(r"\b(?:settings|s)\.(" + "|".join(GROUPS) + r")\b")


def test_every_variable_belongs_to_exactly_one_group() -> None:
    names = [field for cls in GROUPS.values() for field in cls.model_fields]
    assert len(names) == len(set(names)) == len(GROUP_OF)


def test_flat_variables_land_in_their_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TM_AGENT_TIMEOUT_S", "7")
    monkeypatch.setenv("TM_SMTP_PORT", "2525")
    monkeypatch.setenv("TM_WEBHOOK_RETRY_SCHEDULE_S", "0,1,2")
    settings = Settings()
    assert settings.scheduler.agent_timeout_s == 7
    assert settings.notifier.smtp_port == 2525
    assert settings.notifier.webhook_retry_schedule_s == (0, 1, 2)


def test_keywords_take_flat_names_and_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TM_AGENT_ID", "from-env")
    settings = Settings(agent_id="given", nats_url="nats://h:1", data_dir=Path("/srv/tm"))
    assert settings.agent.agent_id == "given"
    assert settings.bus.nats_url == "nats://h:1"
    assert settings.agent_workdir_path == Path("/srv/tm/agents/given")


def test_a_whole_group_can_be_given_and_names_still_win() -> None:
    base = Settings(scheduler_lease_s=3)
    settings = Settings(scheduler=base.scheduler, agent_timeout_s=9)
    assert (settings.scheduler.scheduler_lease_s, settings.scheduler.agent_timeout_s) == (3, 9)


def test_an_unknown_name_is_refused_with_a_pointer() -> None:
    with pytest.raises(TypeError, match=r"unknown setting.*agent_timeout: see trainmaster\.settings"):
        Settings(agent_timeout=5)


def test_group_rules_still_hold() -> None:
    with pytest.raises(ValidationError, match="notify_ack_wait_s must be at least twice"):
        Settings(notify_ack_wait_s=5)
    with pytest.raises(ValidationError, match="scheduler_strategy"):
        Settings(scheduler_strategy="random")


@pytest.mark.parametrize("service", sorted(ALLOWED))
def test_each_service_reads_only_its_groups(service: str) -> None:
    read = {
        (path.name, match.group(1))
        for path in (ROOT / "services" / service).rglob("*.py")
        for match in GROUP_READ.finditer(path.read_text())
    }
    assert read, f"{service} reads no settings group: the pattern no longer matches how settings are read"
    foreign = sorted((name, group) for name, group in read if group not in ALLOWED[service])
    assert not foreign, f"{service} reads settings of other services: {foreign}"


def test_an_empty_creds_variable_means_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TM_NATS_CREDS", "")
    assert Settings().bus.nats_creds is None
    monkeypatch.setenv("TM_NATS_CREDS", "/etc/tm/x.creds")
    assert Settings().bus.nats_creds == Path("/etc/tm/x.creds")


def test_credentials_may_come_from_private_files(tmp_path: Path) -> None:
    password = tmp_path / "smtp-password"
    password.write_text("s3cr3t\n")
    password.chmod(0o600)
    key = tmp_path / "s3-key"
    key.write_text("AKIA-secret")
    key.chmod(0o400)
    s = Settings(smtp_password_file=password, s3_secret_access_key_file=key)
    assert s.notifier.smtp_password.get_secret_value() == "s3cr3t"
    assert s.storage.s3_secret_access_key.get_secret_value() == "AKIA-secret"
    assert "s3cr3t" not in repr(s) and "AKIA-secret" not in repr(s)


def test_a_credential_file_others_may_read_or_a_credential_given_twice_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "smtp-password"
    shared.write_text("s3cr3t")
    shared.chmod(0o644)
    with pytest.raises(ValueError, match=f"may be read by others than its owner: chmod 600 {shared}"):
        Settings(smtp_password_file=shared)
    shared.chmod(0o600)
    with pytest.raises(ValueError, match="set TM_SMTP_PASSWORD or TM_SMTP_PASSWORD_FILE, not both"):
        Settings(smtp_password_file=shared, smtp_password="other")
    with pytest.raises(ValueError, match="cannot read"):
        Settings(s3_secret_access_key_file=tmp_path / "missing")
