"""``trainmaster secrets ...``: the key file that keeps webhook signing secrets encrypted at rest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from trainmaster.cli.render import console, err_console
from trainmaster.secretbox import Keyring, KeyringError, add_key, new_key, write_keyring

secrets_app = typer.Typer(no_args_is_help=True, help="the key file that encrypts webhook signing secrets at rest")


@secrets_app.command("new-key")
def new_key_cmd(
    out: Annotated[Path, typer.Option("--out", help="the key file (TM_SECRETS_KEY_FILE of the notifiers)")],
    add: Annotated[bool, typer.Option("--add", help="put a new first key into an existing file, keeping its "
                                      "keys (a rotation: the new key encrypts, the old ones still decrypt)")] = False,
    kid: Annotated[str | None, typer.Option(help="the new key's id (default: k<date>-<random>)")] = None,
) -> None:
    """Make a key file with one new random key (readable by its owner only), or with --add rotate:
    a new first key in front of the ones there."""
    try:
        if add:
            keyring = add_key(out, kid, allow_shared=True)  # the file is written anew, owner-only
        elif out.exists():
            err_console.print(f"[red]error[/red]: {out} exists; overwriting it would lose the keys that decrypt "
                              "the stored secrets. Use --add to rotate, or another --out")
            raise typer.Exit(1)
        else:
            keyring = Keyring((new_key(kid),))
            write_keyring(out, keyring)
    except (KeyringError, OSError) as exc:
        err_console.print(f"[red]error[/red]: {exc}")
        raise typer.Exit(1) from None
    console.print(f"wrote {out} (mode 0600): key {keyring.primary} encrypts"
                  + (f", {', '.join(keyring.kids[1:])} still decrypt" if len(keyring.kids) > 1 else ""))
    if add:
        console.print("copy it to every notifier host, then restart the notifiers: each re-encrypts the stored "
                      "secrets under the new key when it starts")
