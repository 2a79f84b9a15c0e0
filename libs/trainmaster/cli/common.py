"""What every ``trainmaster`` command shares: its options, its connection to the stack, and the one
place where the stack's errors become messages and exit codes.

The command modules import this one and never each other the other way round
(main -> auth, registry, topics -> common, render)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import typer
from nats.errors import NoRespondersError, NoServersError

from trainmaster.auth.local import local_admin_creds, local_ca_file
from trainmaster.cli.render import err_console, show_error
from trainmaster.client import ApiError, Client, NotAdmitted
from trainmaster.jobfile import JobFileError
from trainmaster.settings import get_settings

NatsOpt = Annotated[str | None, typer.Option("--nats-url", envvar="TM_NATS_URL", help="NATS server URL")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the reply as JSON")]


def connect(nats_url: str | None) -> Client:
    """A client for ``nats_url``, or for the configured server (TM_NATS_URL) when None; with the
    configured credentials (TM_NATS_CREDS), else those of the local admin of a stack run from here;
    over TLS with the configured CA (TM_NATS_CA_FILE), else that of a stack run from here with TLS on."""
    s = get_settings()
    creds = s.bus.nats_creds or local_admin_creds(s.embedded.data_dir)
    ca_file = s.bus.nats_ca_file or local_ca_file(s.embedded.data_dir)
    return Client(nats_url or s.bus.nats_url, prefix=s.bus.subject_prefix, creds=creds, ca_file=ca_file)


def run(coro_fn: Callable[[], Awaitable[int | None]]) -> None:
    """Run a command's coroutine and exit with its code: 1 for an error the stack answered, 2 for a
    bad job file or ``--set``, 3 when the stack cannot be reached or refuses this client, 130 on Ctrl-C."""
    try:
        code = asyncio.run(coro_fn())
    except ApiError as exc:
        show_error(exc)
        raise typer.Exit(1) from None
    except JobFileError as exc:
        err_console.print(f"[red]error[/red]: {exc}")
        raise typer.Exit(2) from None
    except NotAdmitted as exc:
        err_console.print(f"[red]error[/red]: the trainmaster stack refused this client ({exc}): set TM_NATS_CREDS to "
                          "a creds file its authority issued (docs/security.md)")
        raise typer.Exit(3) from None
    except NoRespondersError:
        err_console.print("[red]error[/red]: the trainmaster stack is reachable but nothing answers this request: "
                          "is it still starting (`trainmaster up`), or is a service down?")
        raise typer.Exit(3) from None
    except (OSError, TimeoutError, NoServersError) as exc:
        err_console.print(f"[red]error[/red]: cannot reach the trainmaster stack ({type(exc).__name__}: {exc}). "
                          "Is it up (`trainmaster up`) and is TM_NATS_URL right?")
        raise typer.Exit(3) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    raise typer.Exit(code or 0)


def run_with_client(nats_url: str | None, fn: Callable[[Client], Awaitable[int | None]]) -> None:
    """``run`` a command that needs nothing but a connected client."""
    async def go() -> int | None:
        async with connect(nats_url) as client:
            return await fn(client)

    run(go)


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))
