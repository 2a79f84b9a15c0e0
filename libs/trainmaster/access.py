"""Who may do what: users, their roles in projects, and the decisions made on them.  Pure: the
services resolve a request's caller with ``trainmaster.identity`` and ask these functions.

A *project* is a job's ``account``: the unit of billing, fair share, quotas and pool access.  A
user holds a role in each of its projects:

- ``viewer``: reads the project's jobs, their events and logs, its templates, datasets, topics;
- ``member``: also creates and stops its jobs, manages its templates, datasets and topics;
- ``admin``: also its members and its quota, and reads its audit trail.

The *cluster admin* is whoever asks from inside the services' account (the services themselves,
the operator's admin creds), and any person whose record says ``cluster_admin``: it may do
everything, including crediting projects and managing pools and agents.  A request that crossed
from the people's account carries the server's ``Nats-Request-Info`` (the user's key, set by
nats-server, not by the client); one without it came from inside the services' account.

A request from inside the services' account may name a person it asks for: the API token in
``Tm-Token`` (the HTTP API's gateway does, for each request it passes on).  It is then answered as
that token's user, never more: a header can only narrow what the services' account may do, and
one on a request from the people's account is ignored (``identity.Directory.caller``).
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import msgspec

REQUEST_INFO = "Nats-Request-Info"  # set by nats-server on a request crossing from another account
ON_BEHALF = "Tm-Token"  # on a request from inside the services' account: ask as this API token's user
USER_NAME = r"^[a-z0-9][a-z0-9_-]{0,63}$"  # a subject token and a file name: the user's inbox holds it
USER_NAME_RE = re.compile(USER_NAME)


class Role(enum.IntEnum):
    VIEWER = 1
    MEMBER = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls[text.upper()]
        except KeyError:
            raise ValueError(f"unknown role {text!r}: use viewer, member or admin") from None


ROLE_NAMES = tuple(r.label for r in Role)


# ---------------------------------------------------------------- what tm_users holds
class Credential(msgspec.Struct, frozen=True, omit_defaults=True):
    """One way a user proves who it is: ``nats`` (a creds file: its user key, ``public_key``) or
    ``token`` (an API token for HTTP: only the SHA-256 of it is kept, ``token_hash``)."""

    id: str
    kind: str  # "nats" | "token"
    created_at: float
    public_key: str | None = None
    token_hash: str | None = None
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class UserRecord(msgspec.Struct, frozen=True, omit_defaults=True):
    """A person (key ``<name>`` of ``tm_users``): its roles by project and its credentials.
    ``disabled_at``: the whole user revoked (every credential refused); ``cluster_admin``: it may
    do everything, as the services' account may (only the cluster admin makes one so)."""

    name: str
    created_at: float
    roles: dict[str, str] = {}  # project -> role label
    credentials: list[Credential] = []
    disabled_at: float | None = None
    created_by: str = ""
    cluster_admin: bool = False

    def role_in(self, project: str) -> Role | None:
        label = self.roles.get(project)
        return Role.parse(label) if label else None


# ---------------------------------------------------------------- the caller of a request
@dataclass(frozen=True)
class Caller:
    """Who asked.  ``name``: the user's name (``cluster-admin`` for the services' account);
    ``roles``: its role by project; ``credential``: the id of the credential it used (None: the
    services' account itself)."""

    name: str
    roles: Mapping[str, Role] = field(default_factory=dict)
    cluster_admin: bool = False
    credential: str | None = None

    @property
    def actor(self) -> str:
        """How the audit trail names it."""
        return "cluster-admin" if self.cluster_admin and self.credential is None else f"user/{self.name}"

    def may(self, project: str, need: Role) -> bool:
        return self.cluster_admin or self.roles.get(project, 0) >= need

    def projects(self, need: Role = Role.VIEWER) -> frozenset[str] | None:
        """The projects where it holds at least ``need``; None: every project (the cluster admin)."""
        if self.cluster_admin:
            return None
        return frozenset(p for p, r in self.roles.items() if r >= need)


CLUSTER_ADMIN = Caller("cluster-admin", cluster_admin=True)


class Denied(Exception):
    """The caller may not do this; ``code`` (``unauthorized``: not a known identity;
    ``forbidden``: known, but without the role) and the message say why and what would help."""

    def __init__(self, code: str, message: str, field_name: str = "$") -> None:
        super().__init__(message)
        self.code, self.message, self.field = code, message, field_name


def request_info(raw: str | None) -> dict | None:
    """The server's ``Nats-Request-Info`` header, parsed; None when the request has none."""
    if raw is None:
        return None
    try:
        info = json.loads(raw)
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def caller_of(info: dict | None, by_key: Mapping[str, tuple[UserRecord, Credential]]) -> Caller:
    """The caller of a request whose ``Nats-Request-Info`` is ``info``: the cluster admin without
    one; else the user whose active credential holds the key that connected.  A key no user holds,
    a revoked credential or a disabled user: ``Denied`` (``unauthorized``)."""
    if info is None:
        return CLUSTER_ADMIN
    key = info.get("user")
    found = by_key.get(key) if isinstance(key, str) else None
    if found is None:
        raise Denied("unauthorized", "these credentials belong to no user of trainmaster (revoked, or "
                                     "never issued here): ask an admin for new ones (trainmaster user issue)")
    user, credential = found
    if user.disabled_at is not None or not credential.active:
        raise Denied("unauthorized", f"the credentials of user {user.name!r} were revoked: ask an admin "
                                     "for new ones (trainmaster user issue)")
    return user_caller(user, credential.id)


def user_caller(user: UserRecord, credential_id: str | None) -> Caller:
    roles = {project: Role.parse(label) for project, label in user.roles.items()}
    return Caller(user.name, roles, cluster_admin=user.cluster_admin, credential=credential_id)


def keys_of(users: Iterable[UserRecord]) -> dict[str, tuple[UserRecord, Credential]]:
    """Every NATS user key of every user, to its user and credential (revoked ones included:
    ``caller_of`` says they were revoked rather than unknown)."""
    return {c.public_key: (u, c) for u in users for c in u.credentials if c.kind == "nats" and c.public_key}


def tokens_of(users: Iterable[UserRecord]) -> dict[str, tuple[UserRecord, Credential]]:
    """Every API token hash of every user, to its user and credential."""
    return {c.token_hash: (u, c) for u in users for c in u.credentials if c.kind == "token" and c.token_hash}


def require(caller: Caller, project: str, need: Role, what: str, field_name: str = "account") -> None:
    """``Denied`` (``forbidden``) unless the caller holds ``need`` in ``project``; the message says
    which role it would take and which projects it has."""
    if caller.may(project, need):
        return
    held = caller.roles.get(project)
    if held is not None:
        why = f"you are {held.label} of project {project!r}: {what} takes {need.label} or above"
    else:
        mine = ", ".join(sorted(caller.roles)) or "none"
        why = f"you are not a member of project {project!r} (your projects: {mine}); {what} takes {need.label}"
    raise Denied("forbidden", why, field_name)


def require_cluster_admin(caller: Caller, what: str) -> None:
    if not caller.cluster_admin:
        raise Denied("forbidden", f"{what} is for the cluster admin only")
