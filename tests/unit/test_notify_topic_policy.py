"""Who may do what with a topic (services.notifier.policy, pure): members manage their project's
topics, viewers read them, a topic of another project is as good as missing, the cluster admin
may do everything."""

from __future__ import annotations

import msgspec
import pytest

from services.notifier import policy
from trainmaster.access import CLUSTER_ADMIN, Caller, Denied, Role
from trainmaster.messages import TopicRecord

ALICE = Caller("alice", {"team-a": Role.MEMBER})
VERA = Caller("vera", {"team-a": Role.VIEWER})
BOB = Caller("bob", {"team-b": Role.ADMIN})
TEAM_A = TopicRecord("alerts-a", 1.0, project="team-a")
TEAM_B = TopicRecord("alerts-b", 1.0, project="team-b")


class Missing(Exception):
    pass


def check(caller: Caller, topic: TopicRecord, need: Role) -> None:
    policy.check_topic(caller, topic, need, "doing it", hidden=Missing)


def test_members_manage_and_viewers_read_their_projects_topics() -> None:
    for caller in (ALICE, VERA):
        check(caller, TEAM_A, policy.READ)
    check(ALICE, TEAM_A, policy.MANAGE)
    with pytest.raises(Denied) as exc:
        check(VERA, TEAM_A, policy.MANAGE)
    assert exc.value.code == "forbidden" and "viewer" in exc.value.message and "member" in exc.value.message


def test_another_projects_topic_is_hidden_whatever_the_role_needed() -> None:
    for need in (policy.READ, policy.MANAGE):
        with pytest.raises(Missing):
            check(ALICE, TEAM_B, need)
        with pytest.raises(Missing):
            check(BOB, TEAM_A, need)


def test_the_cluster_admin_may_do_everything() -> None:
    for topic in (TEAM_A, TEAM_B, TopicRecord("old", 1.0)):
        check(CLUSTER_ADMIN, topic, policy.MANAGE)
    policy.check_create(CLUSTER_ADMIN, "anything")
    assert policy.visible_topics(CLUSTER_ADMIN, [TEAM_A, TEAM_B]) == [TEAM_A, TEAM_B]


def test_creating_takes_member_of_the_new_topics_project() -> None:
    policy.check_create(ALICE, "team-a")
    for caller, project in ((VERA, "team-a"), (ALICE, "team-b"), (ALICE, "default")):
        with pytest.raises(Denied) as exc:
            policy.check_create(caller, project)
        assert exc.value.code == "forbidden" and exc.value.field == "project"


def test_a_list_holds_only_the_callers_projects_topics() -> None:
    topics = [TEAM_A, TEAM_B, TopicRecord("old", 1.0)]
    assert policy.visible_topics(ALICE, topics) == [TEAM_A]
    assert policy.visible_topics(VERA, topics) == [TEAM_A]
    assert policy.visible_topics(BOB, topics) == [TEAM_B]
    assert policy.visible_topics(Caller("nobody"), topics) == []


def test_a_record_without_a_project_belongs_to_default() -> None:
    old = msgspec.json.decode(b'{"name": "old", "created_at": 1.0}', type=TopicRecord)
    assert old.project == "default"
    check(Caller("dora", {"default": Role.VIEWER}), old, policy.READ)
