"""Evaluation results that are never thrown away, shared by ``wit compare``, ``wit crosstask`` and ``wit posix``.

* :func:`prepare_outputs` makes the folders of ``--out``/``--plot`` (or refuses them) before any model loads,
  so that a long evaluation cannot end on a missing folder.
* :class:`Saved` is the ``--out`` file used as its own checkpoint: it is rewritten atomically (a temporary file
  in the same folder, then a rename) each time a unit of work completes (a run for ``wit compare``, a condition
  for ``wit crosstask``, an exemplar condition for ``wit posix``), with a ``"resume"`` block holding the
  fingerprint of the inputs and flags, the units done and whether the whole evaluation is complete. The same
  command run again (same fingerprint) reuses those units and computes only the rest; other inputs, other
  flags, or ``--force`` recompute everything. An interrupted command so keeps what finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RESUME_KEY = "resume"


def prepare_outputs(*paths: Path | None) -> None:
    """Create the folder each output file goes into (one log line per folder made), or refuse a path that is a
    folder or lies under a file; called before any model is loaded."""
    for path in paths:
        if path is None:
            continue
        if path.is_dir():
            raise ValueError(f"{path} is a folder: give the name of the file to write")
        parent = path.parent
        for above in (parent, *parent.parents):
            if above.exists():
                if not above.is_dir():
                    raise ValueError(f"cannot write {path}: {above} is a file, not a folder")
                break
        if not parent.exists():
            parent.mkdir(parents=True)
            log.info("created the folder %s for %s", parent, path.name)
        if not os.access(parent, os.W_OK):
            raise PermissionError(f"cannot write into {parent} (for {path})")


def write_json(path: Path, document: Any, indent: int | None = 1) -> Path:
    """``document`` written to ``path`` whole or not at all: a temporary file beside it, then a rename."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(json.dumps(document, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def file_digest(path: str | os.PathLike[str] | None) -> str | None:
    """SHA-256 of a file's bytes (None for no file)."""
    if path is None:
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_identity(model: str | os.PathLike[str]) -> str:
    """What names a model's weights: for a folder, its path and weight files' sizes and modification times (a
    retrained or re-saved model differs; an output written into the folder does not), else the name as given."""
    from wit_plugin.evaluation.crosstask.select import model_cache_key

    folder = Path(model)
    return model_cache_key(folder) or (str(folder.resolve()) if folder.is_dir() else str(model))


OUTPUT_FLAGS = ("out", "plot", "force", "run", "threads")  # change where results go or how fast, not what they are


def command_key(args: Any, ignore: tuple[str, ...] = (), version: int = 1) -> dict[str, Any]:
    """What a command's results depend on: every flag but :data:`OUTPUT_FLAGS` and ``ignore``, a file by its
    bytes and a model folder by :func:`model_identity` (so an edited input file or a re-saved model does not
    match). ``version`` is bumped when the results of the same flags change meaning."""

    def value(item: Any) -> Any:
        if isinstance(item, (list, tuple)):
            return [value(part) for part in item]
        path = Path(item) if isinstance(item, (str, os.PathLike)) else None
        if path is not None and path.is_file():
            return {"file": str(path.resolve()), "sha256": file_digest(path)}
        if path is not None and path.is_dir():
            return model_identity(path)
        return item

    skip = {*OUTPUT_FLAGS, *ignore}
    return {"version": version, **{k: value(v) for k, v in sorted(vars(args).items()) if k not in skip}}


def fingerprint(value: Any) -> str:
    """A short hash of ``value`` (JSON-like; other values by their text)."""
    text = json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


class Saved:
    """The ``--out`` file as a checkpoint (see the module docstring). ``previous`` is what it held from a run of
    the same inputs and flags (None when there is no such file, it came from other inputs, or ``force``), and
    ``done`` the units that run completed."""

    def __init__(self, path: Path | None, key: Any, force: bool = False) -> None:
        self.path, self.fingerprint = path, fingerprint(key)
        self.previous: dict[str, Any] | None = None
        if path is None or not path.is_file() or force:
            return
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            log.warning("%s is not JSON this command wrote: it will be replaced", path)
            return
        resume = document.get(RESUME_KEY) if isinstance(document, dict) else None
        if not isinstance(resume, dict) or resume.get("fingerprint") != self.fingerprint:
            log.info("%s holds results of other inputs or flags: recomputing them (it will be replaced)", path)
            return
        self.previous = document

    @property
    def done(self) -> list[str]:
        return list((self.previous or {}).get(RESUME_KEY, {}).get("done", []))

    @property
    def complete(self) -> bool:
        return bool((self.previous or {}).get(RESUME_KEY, {}).get("complete"))

    def write(self, document: Mapping[str, Any], done: list[str], complete: bool) -> Path | None:
        """``document`` with the resume block, atomically; nothing without a path."""
        if self.path is None:
            return None
        resume = {"fingerprint": self.fingerprint, "done": list(done), "complete": complete}
        return write_json(self.path, {**document, RESUME_KEY: resume})


def interrupted_message(command: str, out: Path | None) -> str:
    """The one line Ctrl-C ends a command with."""
    if out is not None and out.is_file():
        return f"wit {command}: interrupted; what finished is saved in {out}: the same command resumes from it"
    return f"wit {command}: interrupted; nothing was saved" + ("" if out else " (--out keeps finished parts)")
