"""The users signer: what job-intake needs to mint people's credentials, and nothing more — the
people's *scoped* signing key (nats-server gives whoever it signs a person's rights only, whatever
the JWT says) and the public key of the people's account.  Its file
(``TM_USERS_SIGNING_KEY_FILE``, readable by its owner only) holds two lines:

    SA...   the scoped key's seed
    A...    the people's account (USERS) public key

Lines starting with ``#`` are comments.  ``trainmaster auth issue users-signer`` writes it from the
authority's folder; the embedded stack writes ``<data_dir>/auth/users-signer.key``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trainmaster.auth.authority import Authority, sign_person
from trainmaster.auth.nkeys import InvalidKey, KeyKind, KeyPair, kind_of

HEADER = "# trainmaster users signer: the people's scoped signing key (seed), then the people's account"


class InvalidSigner(ValueError):
    pass


@dataclass(frozen=True)
class UsersSigner:
    key: KeyPair  # the scoped signing key of USERS
    account: str  # the USERS account's public key

    def sign(self, public_key: str, name: str, now: int | None = None) -> str:
        """The JWT of person ``name`` whose user key is ``public_key``."""
        return sign_person(self.key, self.account, public_key, name, now)

    def text(self) -> str:
        return f"{HEADER}\n{self.key.seed}\n{self.account}\n"


def signer_of(authority: Authority) -> UsersSigner:
    return UsersSigner(authority.users_signing, authority.users.public_key)


def parse_signer(text: str) -> UsersSigner:
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if len(lines) != 2:
        raise InvalidSigner("a users signer file holds two lines: the scoped key's seed, then the USERS account "
                            "public key (trainmaster auth issue users-signer writes one)")
    try:
        key = KeyPair.from_seed(lines[0])
        account_kind = kind_of(lines[1])
    except InvalidKey as exc:
        raise InvalidSigner(f"not a users signer file: {exc}") from None
    if key.kind != KeyKind.ACCOUNT or account_kind != KeyKind.ACCOUNT:
        raise InvalidSigner("not a users signer file: both keys must be account keys (SA... and A...)")
    return UsersSigner(key, lines[1])


def load_signer(path: Path) -> UsersSigner:
    """The signer kept in ``path``; OSError or InvalidSigner when it cannot be read or is not one."""
    return parse_signer(path.read_text())
