"""JSON Schema of the public message types, generated from the msgspec Structs."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any

import msgspec

from trainmaster import jobfeed
from trainmaster import messages as m
from trainmaster import user_messages as um

PUBLIC_TYPES: dict[str, type] = {
    "job-request": m.JobRequest,
    "job-summary": m.JobSummary,
    "job-record": m.JobRecord,
    "error-reply": m.ErrorReply,
    "get-request": m.GetRequest,
    "list-request": m.ListRequest,
    "list-reply": m.ListReply,
    "stop-request": m.StopRequest,
    "job-event": m.JobCloudEvent,
    "request-event": m.RequestCloudEvent,
    "agent-list": m.AgentList,
    "pool-list": m.PoolList,
    "engine-list": m.EngineList,
    # notifications: the topics API on tm.topics.<verb>
    "topic-create": m.TopicCreate,
    "topic-ref": m.TopicRef,
    "topic": m.TopicView,
    "topic-list": m.TopicList,
    "subscribe-request": m.SubscribeRequest,
    "unsubscribe-request": m.UnsubscribeRequest,
    "subscription": m.SubscriptionView,
    "subscription-list": m.SubscriptionList,
    "deliveries-request": m.DeliveriesRequest,
    "delivery-list": m.DeliveryList,
    # plan, new versions, templates, datasets, accounts
    "plan-reply": m.PlanReply,
    "new-version-request": m.NewVersionRequest,
    "name-ref": m.NameRef,
    "template": m.Template,
    "template-save": m.TemplateSave,
    "template-update": m.TemplateUpdate,
    "template-list": m.TemplateList,
    "dataset-create": m.DatasetCreate,
    "dataset-publish": m.DatasetPublish,
    "dataset-version-ref": m.DatasetVersionRef,
    "dataset": m.Dataset,
    "dataset-version": m.DatasetVersion,
    "dataset-list": m.DatasetList,
    "account": m.Account,
    "account-detail": m.AccountDetail,
    "account-quota": m.AccountQuotaSet,
    "account-credit": m.AccountCredit,
    "account-list": m.AccountList,
    # the audit trail: stream TM_AUDIT, read with tm.audit.list
    "audit-entry": m.AuditEntry,
    "audit-list-request": m.AuditListRequest,
    "audit-list": m.AuditList,
    # people: tm.users.<verb> (user_messages.py)
    "user-create": um.UserCreate,
    "user-created": um.UserCreated,
    "user-grant": um.UserGrant,
    "user-issue": um.UserIssue,
    "user-credential": um.IssuedCredential,
    "user-revoke": um.UserRevoke,
    "user-list-request": um.UserListRequest,
    "user-list": um.UserList,
    "user": um.UserView,
    "whoami": um.WhoAmI,
    # a job's events and logs as streamed replies: tm.jobs.events, tm.jobs.logs
    "job-events-request": jobfeed.EventsRequest,
    "job-logs-request": jobfeed.LogsRequest,
}


def write_schemas(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, type_ in PUBLIC_TYPES.items():
        path = out / f"{name}.schema.json"
        schema = _normalise_descriptions(msgspec.json.schema(type_))
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["title"] = type_.__name__
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written


def _normalise_descriptions(node: Any) -> Any:
    """Descriptions come from docstrings, and msgspec releases differ in how they dedent them:
    reflow each paragraph onto one line so the documented schema depends on the text alone."""
    if isinstance(node, dict):
        return {
            key: _reflow(value) if key == "description" and isinstance(value, str) else _normalise_descriptions(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_normalise_descriptions(item) for item in node]
    return node


def _reflow(text: str) -> str:
    paragraphs = re.split(r"\n\s*\n", inspect.cleandoc(text))
    return "\n\n".join(" ".join(paragraph.split()) for paragraph in paragraphs if paragraph.strip())
