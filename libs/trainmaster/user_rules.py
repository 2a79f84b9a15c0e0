"""Who may create, grant, issue to, revoke and see whom, and each user record a change leaves:
plain functions over ``access`` callers and ``UserRecord``s (job-intake's ``tm.users.*`` handlers
read, call these, write).

- create, grant: the cluster admin, or an admin of the project concerned (a project admin never
  touches the roles its user holds in other projects); making a person a cluster admin (or no
  longer one): the cluster admin only;
- issue: the cluster admin, or the user itself;
- revoke one credential: the cluster admin, or the user itself; disable a whole user: the
  cluster admin;
- see a user: the cluster admin (every role), the user itself (every role), an admin of one of its
  projects (the roles in the projects it administers only).  Another caller learns nothing, not
  even that the user exists (``not_found``, the wording of a missing one).
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from trainmaster.access import Caller, Credential, Denied, Role, UserRecord, require
from trainmaster.auth.nkeys import InvalidKey, KeyKind, kind_of
from trainmaster.decoding import RequestError
from trainmaster.messages import ErrorBody, Violation
from trainmaster.user_messages import CredentialView, UserGrant, UserView, WhoAmI

TOKEN_PREFIX = "tmu_"  # an API token: "tmu_" and 32 random URL-safe characters
STACK_ADMIN = "admin"  # the person the embedded stack makes for its operator (the HTTP API's first token)
MADE_BY_STACK = "trainmaster up"


def refusal(code: str, message: str, field_name: str = "name", hint: str | None = None) -> RequestError:
    return RequestError(ErrorBody(code, message, [Violation(field_name, code, hint or message)]))


def missing_user(name: str) -> RequestError:
    return refusal("not_found", f"no user named {name!r}", hint="list them with `trainmaster user list`")


# ---------------------------------------------------------------- who may
def check_manage(caller: Caller, project: str, what: str) -> None:
    """Creating a user in ``project``, or changing roles in it: its admins and the cluster admin."""
    require(caller, project, Role.ADMIN, what, field_name="project")


def check_cluster_admin_flag(caller: Caller, wanted: bool | None) -> None:
    """Only the cluster admin makes a person a cluster admin, or takes that away."""
    if wanted is not None and not caller.cluster_admin:
        raise Denied("forbidden", "making a person a cluster admin (or no longer one) is for the cluster admin only",
                     "cluster_admin")


def check_grant(caller: Caller, req: UserGrant) -> None:
    """A grant names a role in a project, a cluster admin flag, or both; each takes its own right."""
    if (req.project is None) != (req.role is None):
        missing = "role" if req.role is None else "project"
        raise refusal("invalid_request", "project and role go together: give both, or neither", missing)
    if req.project is None and req.cluster_admin is None:
        raise refusal("invalid_request", "nothing to grant: give project and role, or cluster_admin", "$",
                      "e.g. {\"name\": \"alice\", \"project\": \"team-a\", \"role\": \"member\"}")
    check_cluster_admin_flag(caller, req.cluster_admin)
    if req.project is not None:
        check_manage(caller, req.project, "changing roles in it")


def check_issue(caller: Caller, name: str) -> None:
    if not caller.cluster_admin and caller.name != name:
        raise Denied("forbidden", "you may issue credentials to yourself only; the cluster admin issues them to "
                                  "others", "name")


def check_revoke(caller: Caller, name: str, credential_id: str | None) -> None:
    if caller.cluster_admin:
        return
    if credential_id is None:
        raise Denied("forbidden", "disabling a whole user is for the cluster admin only; you may revoke one of "
                                  "your own credentials (give credential_id)", "credential_id")
    if caller.name != name:
        raise Denied("forbidden", "you may revoke your own credentials only; ask the cluster admin", "name")


def public_key_violation(key: str) -> RequestError | None:
    """A key that is no NATS user key (checksum included)."""
    try:
        if kind_of(key) == KeyKind.USER:
            return None
    except InvalidKey:
        pass
    return refusal("invalid_request", "public_key is no NATS user public key", "public_key",
                   "give the public half (U...) of a user key pair you made (the CLI makes one: trainmaster user "
                   "create / issue)")


def check_key_free(key: str, users: Iterable[UserRecord]) -> None:
    """One user key is one user's: a key another credential holds would name two people."""
    if any(c.public_key == key for u in users for c in u.credentials):
        raise refusal("conflict", "this public key is already a credential of a user", "public_key",
                      "make a new key pair for each credential")


# ---------------------------------------------------------------- who sees what
def visible_roles(caller: Caller, user: UserRecord) -> dict[str, str] | None:
    """The roles of ``user`` the caller may see; None: the caller may not see the user at all."""
    if caller.cluster_admin or caller.name == user.name:
        return dict(user.roles)
    administered = caller.projects(Role.ADMIN) or frozenset()
    shown = {project: role for project, role in user.roles.items() if project in administered}
    return shown or None


def view(user: UserRecord, roles: dict[str, str]) -> UserView:
    """What a reply shows of ``user``: never a token's hash."""
    credentials = [CredentialView(c.id, c.kind, c.created_at, c.public_key, c.revoked_at) for c in user.credentials]
    return UserView(user.name, user.created_at, dict(sorted(roles.items())), credentials, user.created_by,
                    user.disabled_at, user.cluster_admin)


def seen_by(caller: Caller, user: UserRecord | None, name: str) -> UserView:
    """``user`` as the caller sees it; ``not_found`` for a user it may not see (or none)."""
    roles = visible_roles(caller, user) if user is not None else None
    if user is None or roles is None:
        raise missing_user(name)
    return view(user, roles)


def listed(caller: Caller, users: Iterable[UserRecord], project: str | None) -> list[UserView]:
    """The users the caller may see (with ``project``: those holding a role there), by name."""
    out = []
    for user in sorted(users, key=lambda u: u.name):
        roles = visible_roles(caller, user)
        if roles is None or (project is not None and project not in roles):
            continue
        out.append(view(user, roles))
    return out


def whoami(caller: Caller) -> WhoAmI:
    return WhoAmI(caller.name, {p: r.label for p, r in sorted(caller.roles.items())}, caller.cluster_admin,
                  caller.credential)


# ---------------------------------------------------------------- the records
def new_user(name: str, project: str, role: str, credentials: list[Credential], by: str, now: float,
             cluster_admin: bool = False) -> UserRecord:
    return UserRecord(name, now, roles={project: role}, credentials=credentials, created_by=by,
                      cluster_admin=cluster_admin)


def granted(user: UserRecord | None, name: str, project: str | None, role: str | None,
            cluster_admin: bool | None = None) -> UserRecord | None:
    """``user`` with ``role`` in ``project`` (``none``: without a role there; None: roles as they
    are) and ``cluster_admin`` (None: as it is); None when that is already so (nothing to write)."""
    if user is None:
        raise missing_user(name)
    roles = dict(user.roles)
    if project is not None and role == "none":
        roles.pop(project, None)
    elif project is not None and role is not None:
        roles[project] = role
    flag = user.cluster_admin if cluster_admin is None else cluster_admin
    if roles == user.roles and flag == user.cluster_admin:
        return None
    return msgspec.structs.replace(user, roles=roles, cluster_admin=flag)


def with_credential(user: UserRecord | None, name: str, credential: Credential) -> UserRecord:
    if user is None:
        raise missing_user(name)
    if user.disabled_at is not None:
        raise refusal("conflict", f"user {name!r} is disabled: every credential of it is refused",
                      hint="a disabled user stays disabled; create the person again under another name")
    return msgspec.structs.replace(user, credentials=[*user.credentials, credential])


def revoked(user: UserRecord | None, name: str, credential_id: str | None, now: float) -> UserRecord | None:
    """``user`` with ``credential_id`` revoked, or (without one) disabled; None when it already is."""
    if user is None:
        raise missing_user(name)
    if credential_id is None:
        return None if user.disabled_at is not None else msgspec.structs.replace(user, disabled_at=now)
    found = next((c for c in user.credentials if c.id == credential_id), None)
    if found is None:
        raise refusal("not_found", f"user {name!r} has no credential {credential_id!r}", "credential_id",
                      f"see its credentials with `trainmaster user list` or tm.users.get {{\"name\": \"{name}\"}}")
    if not found.active:
        return None
    credentials = [msgspec.structs.replace(c, revoked_at=now) if c.id == credential_id else c
                   for c in user.credentials]
    return msgspec.structs.replace(user, credentials=credentials)


def stack_admin(user: UserRecord | None, kept_hash: str | None, credential: Credential,
                now: float) -> UserRecord | None:
    """The embedded stack's ``admin`` person: a cluster admin with an API token, made once.  None
    when the token on file (``kept_hash``) still opens it (nothing to write); else the record with
    ``credential`` added (made first when there is none).  A user of that name the stack did not
    make, or a disabled one, is left as it is (``ValueError`` says so): the stack never turns
    somebody's user into a cluster admin."""
    if user is None:
        return UserRecord(STACK_ADMIN, now, credentials=[credential], created_by=MADE_BY_STACK, cluster_admin=True)
    if user.created_by != MADE_BY_STACK or not user.cluster_admin:
        raise ValueError(f"a user named {STACK_ADMIN!r} exists that the stack did not make: no admin token")
    if user.disabled_at is not None:
        raise ValueError(f"the stack's {STACK_ADMIN!r} user is disabled: no admin token")
    if kept_hash is not None and any(c.token_hash == kept_hash and c.active for c in user.credentials):
        return None
    return msgspec.structs.replace(user, credentials=[*user.credentials, credential])
