"""Read a local code directory's Python files: lines that use CUDA (R18) and the modules the code
imports (R13); and whether ``requirements.txt`` stays inside the directory.  Blocking: the
validator runs it in a worker thread.  Bounded (files and bytes) so a huge tree cannot stall it."""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

from services.validator.model import CodeFinding, CodeScan

MAX_FILES = 2000
MAX_FILE_BYTES = 1024 * 1024
SKIP_DIRS = {"__pycache__", ".git", ".venv", "venv", "site-packages", "node_modules", ".tox"}

# what moves work onto an NVIDIA GPU in the common frameworks
CUDA_RE = re.compile(
    r"""\.cuda\s*\(|torch\.device\(\s*['"]cuda|['"]cuda(?::\d+)?['"]|\bimport\s+cupy\b|\bcupy\.|"""
    r"""['"]/?(?:device:)?gpu:\d['"]|tf\.config\.experimental\.set_memory_growth|CUDA_VISIBLE_DEVICES""",
    re.IGNORECASE,
)
# a line that only asks whether CUDA is there (and falls back otherwise) is no reason to warn
_PROBE_RE = re.compile(r"is_available\(\)|is_built_with_cuda\(\)")


def python_files(root: Path) -> list[Path]:
    out: list[Path] = []
    for dirpath, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
        for name in sorted(names):
            if name.endswith(".py"):
                out.append(Path(dirpath) / name)
                if len(out) >= MAX_FILES:
                    return out
    return out


def imports_of(source: str) -> set[str]:
    """Top-level names of the modules ``source`` imports (absolute imports only)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return set()
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def cuda_lines(source: str, relative: str) -> list[CodeFinding]:
    out: list[CodeFinding] = []
    for number, line in enumerate(source.splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#") or _PROBE_RE.search(text):
            continue
        if CUDA_RE.search(text.split("#", 1)[0]):
            out.append(CodeFinding(relative, number, text[:120]))
    return out


def scan(code_dir: str) -> CodeScan:
    root = Path(code_dir)
    if not root.is_dir():
        return CodeScan()
    real_root = os.path.realpath(root)
    cuda: list[CodeFinding] = []
    imports: set[str] = set()
    for path in python_files(root):
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                continue
            source = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        relative = path.relative_to(root).as_posix()
        cuda += cuda_lines(source, relative)
        imports |= imports_of(source)
    # the code's own modules are not frameworks
    local = {p.stem for p in root.glob("*.py")} | {p.name for p in root.iterdir() if p.is_dir()}
    requirements = root / "requirements.txt"
    outside = False
    if requirements.is_symlink() or requirements.exists():
        real = os.path.realpath(requirements)
        outside = not (real == real_root or real.startswith(real_root.rstrip("/") + "/"))
    return CodeScan(cuda=tuple(cuda), imports=frozenset(imports - local), requirements_outside=outside)
