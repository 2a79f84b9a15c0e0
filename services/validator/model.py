"""What the validator's rules know about the world, as plain data (gathered by ``facts.py``).

The rules (``rules.py``, ``catalog_rules.py``) read only these; no I/O happens inside them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from trainmaster.algorithms import PresetCatalog, load_presets
from trainmaster.catalog import EngineCatalog, ResourceCatalog, load_engines, load_resources
from trainmaster.storage_roots import Owner


@dataclass(frozen=True)
class PathFact:
    """What the storage said about one location (local path or s3:// URL) when facts were gathered."""

    exists: bool = False
    is_dir: bool = False
    is_file: bool = False
    readable: bool = False
    real: str = ""  # local: os.path.realpath (symlinks and ``..`` resolved); s3: the normalised URL
    has_entries: bool = False  # a directory (or prefix) with at least one entry
    marker: Owner | None = None  # a local directory's trainmaster marker (storage_roots.MARKER), if readable
    error: str | None = None  # why the location could not be inspected (e.g. permission denied)
    # object storage (s3://) only
    remote: bool = False
    region: str | None = None  # the bucket's region
    files: int = 0  # files under the prefix
    long_names: int = 0  # of which with a name component longer than 255 characters (R7)


PathFacts = Mapping[str, PathFact]
MISSING = PathFact()


@dataclass(frozen=True)
class VersionFact:
    files: int
    long_names: int  # files with a name component longer than 255 characters (R7)


@dataclass(frozen=True)
class DatasetFact:
    location: str
    versions: Mapping[str, VersionFact]  # the versions that exist (each may be looked up lazily)
    project: str = "default"  # only this project's jobs may train on it


@dataclass(frozen=True)
class AccountFact:
    name: str
    exists: bool
    balance: float = 0.0
    currency: str = ""


@dataclass(frozen=True)
class CodeFinding:
    file: str  # relative to the code directory
    line: int
    text: str


@dataclass(frozen=True)
class CodeScan:
    """What the code directory's Python files show: lines that use CUDA, and top-level imports."""

    cuda: tuple[CodeFinding, ...] = ()
    imports: frozenset[str] = frozenset()
    escaping_links: tuple[str, ...] = ()  # requirements.txt (or other files) that are symlinks leading out
    requirements_outside: bool = False  # requirements.txt resolves outside the code directory


@dataclass(frozen=True)
class Facts:
    """Everything the rules read.  ``None`` means "not looked up": the rule that needs it is skipped
    (so pure unit tests can give only what they test)."""

    paths: PathFacts = field(default_factory=dict)
    datasets: Mapping[str, DatasetFact] | None = None
    account: AccountFact | None = None
    topic_exists: bool | None = None
    topic_project: str | None = None  # the project of the job's subscription's topic
    region: str | None = None  # the service's region (R6)
    code: CodeScan | None = None
    roots: tuple[str, ...] | None = None  # the job's project's storage roots, resolved (realpath)
    engines: EngineCatalog = field(default_factory=load_engines)
    resources: ResourceCatalog = field(default_factory=load_resources)
    presets: PresetCatalog = field(default_factory=load_presets)


def as_facts(facts: Facts | PathFacts) -> Facts:
    return facts if isinstance(facts, Facts) else Facts(paths=facts)
