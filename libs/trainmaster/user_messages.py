"""The messages of ``tm.users.<verb>`` (answered by job-intake): people, their roles in projects
and their credentials.  What ``tm_users`` keeps is ``trainmaster.access.UserRecord``; a reply shows
a ``UserView`` of it, never a token's hash."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

from trainmaster import names
from trainmaster.access import USER_NAME

UserName = Annotated[str, Meta(pattern=USER_NAME, description="lowercase letters, digits, '_' and '-', at most 64")]
ProjectName = Annotated[str, Meta(pattern=names.ACCOUNT_NAME, description="the project: a job's account")]
RoleName = Literal["viewer", "member", "admin"]
# a NATS user public key: "U" and 55 more base32 characters (checked for its checksum too)
PublicKey = Annotated[str, Meta(pattern=r"^U[A-Z2-7]{55}$", description="a NATS user public key (U...)")]
CredentialId = Annotated[str, Meta(pattern=names.TOKEN)]


# ---------------------------------------------------------------- requests
class UserCreate(Struct, frozen=True, forbid_unknown_fields=True):
    """Body of ``tm.users.create``: a new user with ``role`` in ``project``.  ``public_key``: the
    user key its holder made (job-intake signs its JWT; the seed never leaves the holder);
    ``token``: also an API token (in the reply only); ``cluster_admin``: the person may do
    everything (only the cluster admin may ask for it)."""

    name: UserName
    project: ProjectName
    role: RoleName
    public_key: PublicKey | None = None
    token: bool = True
    cluster_admin: bool = False


class UserGrant(Struct, frozen=True, forbid_unknown_fields=True):
    """Body of ``tm.users.grant``: set the user's role in ``project`` (``none``: remove it), and/or
    make it a cluster admin or no longer one (``cluster_admin``: the cluster admin only).  ``project``
    and ``role`` go together."""

    name: UserName
    project: ProjectName | None = None
    role: Literal["viewer", "member", "admin", "none"] | None = None
    cluster_admin: bool | None = None


class UserIssue(Struct, frozen=True, forbid_unknown_fields=True):
    """Body of ``tm.users.issue``: one more credential (``public_key`` is needed for ``nats``)."""

    name: UserName
    kind: Literal["nats", "token"]
    public_key: PublicKey | None = None


class UserRevoke(Struct, frozen=True, forbid_unknown_fields=True):
    """Body of ``tm.users.revoke``: one credential, or (without ``credential_id``) the whole user."""

    name: UserName
    credential_id: CredentialId | None = None


class UserListRequest(Struct, frozen=True, forbid_unknown_fields=True):
    """Body of ``tm.users.list``: only the users of ``project`` when given."""

    project: ProjectName | None = None


class UserRef(Struct, frozen=True, forbid_unknown_fields=True):
    """Body of ``tm.users.get``."""

    name: str


class TokenRef(Struct, frozen=True, forbid_unknown_fields=True):
    """Body of ``tm.users.authenticate`` (the services only): the API token to resolve."""

    token: Annotated[str, Meta(max_length=256)]


# ---------------------------------------------------------------- replies
class CredentialView(Struct, frozen=True, omit_defaults=True):
    id: str
    kind: str
    created_at: float
    public_key: str | None = None
    revoked_at: float | None = None


class UserView(Struct, frozen=True, omit_defaults=True):
    """A user as a caller may see it: its roles (those the caller may see), its credentials."""

    name: str
    created_at: float
    roles: dict[str, str]
    credentials: list[CredentialView]
    created_by: str = ""
    disabled_at: float | None = None
    cluster_admin: bool = False


class UserList(Struct, frozen=True):
    users: list[UserView]


class UserCreated(Struct, frozen=True, omit_defaults=True):
    """Reply of ``tm.users.create``.  ``jwt`` (with ``credential_id``) when a public key was given;
    ``token`` (with ``token_id``) when one was asked for: shown here once, kept only as a hash."""

    user: str
    project: str
    role: str
    credential_id: str | None = None
    jwt: str | None = None
    token: str | None = None
    token_id: str | None = None


class IssuedCredential(Struct, frozen=True, omit_defaults=True):
    """Reply of ``tm.users.issue``: the new credential, its secret part shown once."""

    user: str
    credential_id: str
    kind: str
    jwt: str | None = None
    token: str | None = None


class WhoAmI(Struct, frozen=True, omit_defaults=True):
    """Reply of ``tm.users.whoami`` and ``tm.users.authenticate``: who the caller is."""

    user: str
    roles: dict[str, str]
    cluster_admin: bool
    credential_id: str | None = None
