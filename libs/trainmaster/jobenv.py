"""The environment a job sees: an allowlist, never the agent's own environment.

A node gets exactly:

- ``PATH`` (the runtime's ``bin`` first, then a fixed system path), ``HOME`` and ``TMPDIR`` (folders
  of its own in its run folder), ``VIRTUAL_ENV`` (when the runtime is a virtual environment);
- ``LANG`` and ``LC_ALL`` (``C.UTF-8`` unless the spec's ``env`` says otherwise) and
  ``PYTHONUNBUFFERED=1`` (lines reach the log stream as they are printed);
- the job variables (the ``TM_JOB_*`` family and ``TM_ATTEMPT``) and the distributed variables
  (``WORLD_SIZE``, ``RANK``, ... ``TF_CONFIG``);
- the storage credentials of the job's project, when the agent has them (``AWS_ACCESS_KEY_ID``,
  ... : services/executor_agent/credentials.py);
- the spec's ``env``, checked here (``check_env``, used by the validator): it may not set a ``TM_``
  or ``AWS_`` name or one of the names the agent sets itself (``RESERVED``).

No agent setting (``TM_*``: the bus address and credentials, storage and mail secrets) and nothing
else of the agent's environment reaches a job.  Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from trainmaster.messages import Violation

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_ENV_ENTRIES = 64
MAX_ENV_VALUE_BYTES = 4096

# what a job's PATH holds after its runtime's bin: the system's own folders, nothing of the agent's
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_LOCALE = "C.UTF-8"

JOB_VARIABLES = ("TM_JOB_ID", "TM_JOB_NAME", "TM_JOB_VERSION", "TM_ATTEMPT")
DISTRIBUTED_VARIABLES = ("WORLD_SIZE", "RANK", "NODE_RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TF_CONFIG")
# set by the agent for every node; the loader variables would run code of the spec's choosing in
# every process the job starts, the runtime's interpreter included
RESERVED = frozenset({"PATH", "HOME", "TMPDIR", "VIRTUAL_ENV", *DISTRIBUTED_VARIABLES,
                      "LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT"})


def env_problem(name: str, value: str) -> str | None:
    """Why the spec's ``env`` may not hold ``name=value`` (None: it may)."""
    if not ENV_NAME_RE.match(name):
        return (f"environment variable name {name!r} is not allowed: start with a letter or '_' and use only "
                "letters, digits and '_'")
    if name.upper().startswith("TM_"):
        return f"{name} is not allowed: TM_ names belong to trainmaster (the job variables and its settings)"
    if name.upper().startswith("AWS_"):
        # the project's storage credentials (and what would change how S3 clients read them:
        # AWS_PROFILE, AWS_ENDPOINT_URL_S3, ...) come from the agent, never from the job's spec
        return (f"{name} is not allowed: AWS_ names are set by the agent from the job's project (its storage "
                "credentials) and cannot be given in env")
    if name in RESERVED:
        return f"{name} is set by the agent for every node and cannot be given in env"
    if "\x00" in value:
        return f"the value of {name} contains a NUL character"
    if len(value.encode("utf-8")) > MAX_ENV_VALUE_BYTES:
        return f"the value of {name} is longer than {MAX_ENV_VALUE_BYTES} bytes"
    return None


def check_env(env: Mapping[str, str]) -> list[Violation]:
    """Every problem of a job request's ``env``, each on the field ``env.<NAME>``."""
    out: list[Violation] = []
    if len(env) > MAX_ENV_ENTRIES:
        out.append(Violation("env", "too_many_env_variables",
                             f"env has {len(env)} variables: give at most {MAX_ENV_ENTRIES}"))
    for name, value in env.items():
        problem = env_problem(name, value)
        if problem is not None:
            out.append(Violation(f"env.{name}", "invalid_env_variable", problem))
    return out


def allowed(env: Mapping[str, str]) -> dict[str, str]:
    """What of a spec's ``env`` the agent passes on: everything the validator allows (the agent
    checks again rather than trust that every request went through the validator)."""
    return {name: value for name, value in env.items() if env_problem(name, value) is None}


def job_environment(*, job: Mapping[str, str], spec_env: Mapping[str, str], home: str, tmpdir: str,
                    runtime_bin: str | None, virtual_env: str | None) -> dict[str, str]:
    """The whole environment of a framework node (the distributed variables are added at start)."""
    env = {"LANG": DEFAULT_LOCALE, "LC_ALL": DEFAULT_LOCALE, "PYTHONUNBUFFERED": "1", **allowed(spec_env)}
    env["PATH"] = f"{runtime_bin}:{SAFE_PATH}" if runtime_bin else SAFE_PATH
    env["HOME"] = home
    env["TMPDIR"] = tmpdir
    if virtual_env:
        env["VIRTUAL_ENV"] = virtual_env
    env.update(job)
    return env
