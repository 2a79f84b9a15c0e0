"""The shapes of names, ids and keys, written once.

Message types use the patterns (msgspec ``Meta(pattern=...)``); the validator, job-intake, the
notifier and the agent match with the compiled forms.  A token is safe as a KV key, a subject
token and a file name, which is why ids are tokens.
"""

from __future__ import annotations

import re

NAME = r"^[A-Za-z0-9_-]{1,64}$"  # jobs, templates, topics, registry entries
ACCOUNT_NAME = r"^[A-Za-z0-9_.-]{1,64}$"  # accounts may hold dots ("team.ml")
TOKEN = r"^[A-Za-z0-9_-]{1,128}$"  # job, agent and request ids
CREDIT_ID = r"^[A-Za-z0-9_.:-]{1,128}$"  # a caller's id for a credit, so that a retried credit is a no-op
PARAMETER_NAME = r"^[A-Za-z_][A-Za-z0-9_.-]*$"  # run parameters, passed on as --name=value
PLAIN_KEY = r"^[A-Za-z_][A-Za-z0-9_-]*$"  # a mapping key written `.key` in a field path (else `["key"]`)
# an audit entry's project: an account, or "@cluster" for what belongs to no account (no account
# name holds "@", so the two never meet)
AUDIT_PROJECT = r"^(@cluster|[A-Za-z0-9_.-]{1,64})$"

NAME_RE = re.compile(NAME)
TOKEN_RE = re.compile(TOKEN)
ACCOUNT_NAME_RE = re.compile(ACCOUNT_NAME)
PARAMETER_NAME_RE = re.compile(PARAMETER_NAME)
PLAIN_KEY_RE = re.compile(PLAIN_KEY)
