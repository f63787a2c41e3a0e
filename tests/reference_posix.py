"""The authors' POSIX package, prompt-sensitivity-index 0.0.1, as a reference for ``--psi package``.

Its wheel comes from the package index (``pip download``), is unpacked into a folder and imported from there:
never installed, nothing of it stubbed. Used by ``tests/test_posix.py`` and ``bench/posix_package.py``.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

PACKAGE = "prompt-sensitivity-index==0.0.1"
TOP = "prompt_sensitivity_index"


class ReferenceUnavailable(RuntimeError):
    """The package cannot run here; the message says why (no index reachable, a dependency not installed)."""


def load_reference(folder: Path) -> tuple[ModuleType, ModuleType]:
    """The package's ``posix`` and ``models`` modules, its wheel downloaded into ``folder`` on first use."""
    folder.mkdir(parents=True, exist_ok=True)
    wheels = sorted(folder.glob("prompt_sensitivity_index-*.whl"))
    if not wheels:
        download = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check"]
        download += ["--timeout", "15", "--retries", "1", PACKAGE, "-d", str(folder)]
        try:
            done = subprocess.run(download, capture_output=True, text=True, timeout=180, check=False)
        except subprocess.TimeoutExpired:
            raise ReferenceUnavailable(f"pip download {PACKAGE} timed out (no package index reachable?)") from None
        wheels = sorted(folder.glob("prompt_sensitivity_index-*.whl"))
        if done.returncode != 0 or not wheels:
            tail = " ".join((done.stderr or done.stdout).split())[-300:]
            raise ReferenceUnavailable(f"pip download {PACKAGE} failed (offline?): {tail}")
    unpacked = folder / "unpacked"
    with zipfile.ZipFile(wheels[-1]) as archive:
        archive.extractall(unpacked)
    missing = sorted(name for name in _imports(unpacked / TOP) if importlib.util.find_spec(name) is None)
    if missing:
        raise ReferenceUnavailable(f"{PACKAGE} imports {', '.join(missing)}, which is not installed here")
    for name in [name for name in sys.modules if name == TOP or name.startswith(f"{TOP}.")]:
        del sys.modules[name]  # always the copy just unpacked
    sys.path.insert(0, str(unpacked))
    try:
        return importlib.import_module(f"{TOP}.posix"), importlib.import_module(f"{TOP}.models")
    finally:
        sys.path.remove(str(unpacked))


def _imports(source: Path) -> set[str]:
    """Top-level modules the package's files import (its relative imports left out)."""
    names: set[str] = set()
    for path in source.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names.add(node.module.split(".")[0])
    return names - {TOP}
