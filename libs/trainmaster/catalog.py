"""Catalogs that are data, not code: resource pools and their flavors (``resources.yaml``) and
the engines of the "common framework" algorithm source (``engines.yaml``).

Loaded from ``TM_CATALOG_DIR`` when set, else from the files shipped beside this module.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal, TypeVar

import msgspec
import yaml

from trainmaster.names import ACCOUNT_NAME_RE

SHIPPED = Path(__file__).with_name("catalogs")
C = TypeVar("C")


class Flavor(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    cpus: float
    memory_mb: int
    price_per_hour: float
    gpus: int = 0
    gpu_type: str | None = None


class Pool(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    flavors: list[Flavor]
    description: str = ""
    kind: Literal["public", "dedicated"] = "public"
    accelerator: Literal["cpu", "gpu"] = "cpu"
    # the most nodes one job may ever get in this pool (a dedicated pool's size); None = no limit
    max_nodes: int | None = None
    # the projects (accounts) whose jobs may run here; None = every account
    accounts: list[str] | None = None

    def admits(self, account: str) -> bool:
        return self.accounts is None or account in self.accounts

    @property
    def default_flavor(self) -> Flavor:
        return self.flavors[0]

    def flavor(self, name: str | None) -> Flavor | None:
        if name is None:
            return self.default_flavor
        return next((f for f in self.flavors if f.name == name), None)


class ResourceCatalog(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pools: list[Pool]

    def pool(self, name: str) -> Pool | None:
        return next((p for p in self.pools if p.name == name), None)


class EngineVersion(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    version: str
    packages: list[str] = []  # pip requirements of the runtime


class Engine(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    versions: list[EngineVersion]
    aliases: list[str] = []
    imports: list[str] = []  # top-level modules that identify code written for this engine
    distributed: bool = True  # False: node count must be 1 (Caffe, R19)

    def version(self, version: str | None) -> EngineVersion | None:
        """The named version, or the newest listed when none is named."""
        if version is None:
            return self.versions[-1]
        return next((v for v in self.versions if v.version == version), None)


class EngineCatalog(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    engines: list[Engine]

    def engine(self, name: str) -> Engine | None:
        key = name.strip().lower()
        return next((e for e in self.engines if key == e.name or key in e.aliases), None)


class CatalogError(ValueError):
    pass


def parse_catalog(text: str, type_: type[C], source: str) -> C:
    """A YAML catalog as ``type_``; any fault names the file and the field."""
    try:
        return msgspec.convert(yaml.safe_load(text), type_)
    except (yaml.YAMLError, msgspec.ValidationError) as exc:
        raise CatalogError(f"{source}: {exc}") from exc


def parse_resources(text: str, source: str = "resources.yaml") -> ResourceCatalog:
    catalog = parse_catalog(text, ResourceCatalog, source)
    for pool in catalog.pools:
        if not pool.flavors:
            raise CatalogError(f"{source}: pool {pool.name!r} has no flavor")
        bad = [name for name in pool.accounts or [] if not ACCOUNT_NAME_RE.fullmatch(name)]
        if bad:  # a typo would shut the pool to the account meant, silently
            raise CatalogError(f"{source}: pool {pool.name!r}: {', '.join(map(repr, bad))} is no account name "
                               "(1-64 letters, digits, '.', '_', '-')")
    return catalog


@lru_cache
def load_resources(catalog_dir: Path | None = None) -> ResourceCatalog:
    path = (catalog_dir or SHIPPED) / "resources.yaml"
    return parse_resources(path.read_text(encoding="utf-8"), str(path))


def parse_engines(text: str, source: str = "engines.yaml") -> EngineCatalog:
    return parse_catalog(text, EngineCatalog, source)


@lru_cache
def load_engines(catalog_dir: Path | None = None) -> EngineCatalog:
    path = (catalog_dir or SHIPPED) / "engines.yaml"
    return parse_engines(path.read_text(encoding="utf-8"), str(path))
