"""Build stages connected by files, each recording the configuration that produced its output.

A stage is a directory of the build's work directory with a ``stage.json``:
``{"stage": NAME, "config": {...}, "complete": bool}``. It is written when the stage starts
(``complete`` false) and rewritten when it ends. On the next run:

- no ``stage.json``: the stage runs from scratch;
- the same configuration, complete: the stage is skipped and its output reused;
- the same configuration, incomplete: the stage resumes (stages that write per item, such as
  extraction and matching, keep what they finished; the others start again);
- another configuration: :class:`StageConfigError` names the differing keys, unless
  ``overwrite``, which clears the stage and runs it again.

A stage's configuration contains its inputs' configurations (:func:`digest` of them), so a
change upstream also makes every later stage differ: nothing is reused silently.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from vloc.io.files import write_text_atomic

logger = logging.getLogger(__name__)

STAGE_FILE = "stage.json"


class StageConfigError(ValueError):
    """A stage's output was written under another configuration."""


def digest(value: Any) -> str:
    """A short stable hash of a JSON-serializable value (keys sorted)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


class Stage:
    """One stage's directory; open it with :meth:`open`, then :meth:`complete` it."""

    def __init__(self, directory: Path, name: str, config: dict[str, Any], done: bool):
        self.directory, self.name, self.config, self.done = directory, name, config, done

    @property
    def key(self) -> str:
        """What later stages record of this one."""
        return digest({"stage": self.name, "config": self.config})

    @classmethod
    def open(cls, work: Path, name: str, config: dict[str, Any], overwrite: bool = False) -> "Stage":
        directory = Path(work) / name
        config = json.loads(json.dumps(config, default=str))  # as it reads back from disk
        path = directory / STAGE_FILE
        if path.is_file():
            recorded = json.loads(path.read_text())
            if recorded.get("config") == config:
                done = bool(recorded.get("complete"))
                logger.info("%s: %s", name, f"complete in {directory}, reused" if done else f"resuming in {directory}")
                return cls(directory, name, config, done)
            changes = _differences(recorded.get("config"), config)
            if not overwrite:
                raise StageConfigError(
                    f"{directory}: written under another configuration ({'; '.join(changes[:5])}); "
                    "pass --overwrite to recompute it, or use another --work directory")
            logger.info("%s: configuration changed (%s), recomputing", name, "; ".join(changes[:5]))
            shutil.rmtree(directory)
        elif directory.exists():  # killed before its stage.json was written: nothing recorded to keep
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        stage = cls(directory, name, config, False)
        stage._write(False)
        return stage

    def complete(self) -> None:
        self._write(True)
        self.done = True

    def _write(self, complete: bool) -> None:
        write_text_atomic(self.directory / STAGE_FILE,
                          json.dumps({"stage": self.name, "config": self.config, "complete": complete}, indent=1))


def lap(seconds: dict[str, float], stage: str, since: float) -> float:
    """Record (and log) the seconds since ``since`` as ``stage``'s; returns now."""
    now = time.perf_counter()
    seconds[stage] = now - since
    logger.info("%s: %.1f s", stage, seconds[stage])
    return now
