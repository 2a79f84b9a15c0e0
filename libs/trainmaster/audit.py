"""The audit trail: who did what, one entry per audited action on the append-only stream
``TM_AUDIT`` (``tm.audit.<project>.<action>``).

``actor_of`` and ``entry_id`` are pure; ``record`` publishes.  A failed publish is logged and does
not fail the action: the action has already happened (a job stored, an account credited), so
failing its reply would only make the caller retry something done, and an audit outage must not
stop the cluster.  The log line keeps the entry, so an operator can still see it."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import structlog
from faststream.nats import NatsBroker

from trainmaster import names
from trainmaster.bus import publish_js
from trainmaster.delivery_policy import MSG_ID
from trainmaster.messages import AuditEntry, encode
from trainmaster.topology import Topology

log = structlog.get_logger()

ADMIN = "cluster-admin"  # a request from inside the services' account (no Nats-Request-Info)
CLUSTER = "@cluster"  # the project of what belongs to no account (templates, datasets, topics, agents)
REQUEST_INFO = "Nats-Request-Info"  # set by nats-server on a request crossing from another account
ON_BEHALF = "Tm-Token"  # an API token the services' account asks for (trainmaster.access.ON_BEHALF)
UNKNOWN_TOKEN = "api-token/unknown"  # a request on behalf of a token nobody holds (never the token)


def actor_of(headers: Mapping[str, str] | None) -> str:
    """Who sent a request, as the bus knows it.  Without ``Nats-Request-Info`` the request came
    from inside the services' account: the cluster admin.  With it, ``<account>/<user>`` (the
    user's name tag where it has one, else its user name or key).  A request of the services'
    account on behalf of an API token (``Tm-Token``) whose user could not be found is
    ``api-token/unknown``: the token itself is never written down."""
    raw = (headers or {}).get(REQUEST_INFO)
    if raw is None:
        return UNKNOWN_TOKEN if ON_BEHALF in (headers or {}) else ADMIN
    try:
        info = json.loads(raw)
    except ValueError:
        return "unknown"
    if not isinstance(info, dict):
        return "unknown"
    account = info.get("acc") or "?"
    user = info.get("name_tag") or info.get("user") or "?"
    return f"{account}/{user}"


def loose_body(body: bytes) -> dict[str, Any]:
    """A request or reply body read only to name what it was about (its handler decodes it for real)."""
    try:
        value = json.loads(body) if body.strip() else {}
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth: nothing to name
        return {}
    return value if isinstance(value, dict) else {}


def refusal_of(reply: bytes) -> str | None:
    """The message of an error reply; None for any other reply."""
    error = loose_body(reply).get("error")
    if not isinstance(error, dict):
        return None
    return str(error.get("message", "refused"))


def project_of(value: Any) -> str:
    """``value`` as an entry's project when it is an account name, else ``@cluster``."""
    if isinstance(value, str) and names.ACCOUNT_NAME_RE.match(value):
        return value
    return CLUSTER


def entry_id(entry: AuditEntry, key: str) -> str:
    """The entry's ``Nats-Msg-Id``: the same action on the same thing with the same ``key`` (a
    request id, a job id) is one entry, however often its handler runs."""
    return f"audit:{entry.project}:{entry.action}:{entry.target}:{entry.outcome}:{key}"


def entry(actor: str, action: str, project: str, target: str, *, reason: str | None = None,
          detail: dict[str, Any] | None = None, at: float | None = None) -> AuditEntry:
    return AuditEntry(at=time.time() if at is None else at, actor=actor, action=action, project=project,
                      target=target, outcome="done" if reason is None else "refused", reason=reason,
                      detail=detail or {})


async def record(broker: NatsBroker, topo: Topology, item: AuditEntry, key: str) -> None:
    """Append ``item`` to the audit stream (see the module's note on failures)."""
    try:
        await publish_js(broker, topo.audit(item.project, item.action), encode(item),
                         stream=topo.stream_audit.name, msg_id=entry_id(item, key))
    except Exception as exc:  # any failure: the action stands, the entry is logged
        not_recorded(item, exc)


def publication(topo: Topology, item: AuditEntry, key: str) -> tuple[str, bytes, dict[str, str]]:
    """``item`` as a JetStream publish (subject, body, headers), for a writer that sends many at
    once; one that fails is ``not_recorded``."""
    return topo.audit(item.project, item.action), encode(item), {MSG_ID: entry_id(item, key)}


def not_recorded(item: AuditEntry, exc: BaseException) -> None:
    log.error("audit entry not recorded", entry=msgspec_dict(item), error=f"{type(exc).__name__}: {exc}")


def msgspec_dict(item: AuditEntry) -> dict[str, Any]:
    return json.loads(encode(item))
