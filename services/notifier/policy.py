"""Who may do what with a topic (pure).  A topic belongs to a project: its members create and
delete it and manage its subscriptions, its viewers read it (get, list, subscriptions,
deliveries); the cluster admin may do everything.

A topic the caller may not see is answered exactly like a missing one (``hidden`` raises what the
shell raises for a missing topic), so that its name does not tell another project it exists; a
visible topic without the role needed is ``forbidden``."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from trainmaster.access import Caller, Role, require
from trainmaster.messages import TopicRecord

READ = Role.VIEWER  # get, list, subscriptions, deliveries
MANAGE = Role.MEMBER  # create, delete, subscribe, unsubscribe


def visible(caller: Caller, topic: TopicRecord) -> bool:
    return caller.may(topic.project, READ)


def visible_topics(caller: Caller, topics: Iterable[TopicRecord]) -> list[TopicRecord]:
    """The topics of the projects the caller may read (every topic for the cluster admin)."""
    mine = caller.projects(READ)
    return [t for t in topics if mine is None or t.project in mine]


def check_create(caller: Caller, project: str) -> None:
    """``access.Denied`` unless the caller is a member (or admin) of the new topic's project."""
    require(caller, project, MANAGE, "creating a topic", field_name="project")


def check_topic(caller: Caller, topic: TopicRecord, need: Role, what: str, *,
                hidden: Callable[[], Exception], field_name: str = "name") -> None:
    """The caller may do ``what`` (which takes ``need``) on ``topic``: ``hidden()`` raised when it
    may not even see the topic, ``access.Denied`` (``forbidden``) when it sees it without ``need``."""
    if not visible(caller, topic):
        raise hidden()
    require(caller, topic.project, need, what, field_name=field_name)
