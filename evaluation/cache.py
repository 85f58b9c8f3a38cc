"""A content-keyed cache of evaluations, so an expensive score is never computed twice.

The key is the SHA-256 of (artefact content hash, split, puzzle task version, the items' hash,
generation settings). The artefact hash is of the adapter's files, not its path: retraining the
same recipe with the same seed into another folder hits the same entry, and an adapter that was
overwritten misses it. Entries are JSON files written atomically (temporary file, rename), with the
per-item samples beside them for independent re-grading.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# The files that make an artefact, in the order they are hashed. ``model.safetensors`` covers a
# bare base model, the adapter files an adapter folder.
_ARTEFACT_FILES = (
    "adapter_config.json",
    "adapter_model.safetensors",
    "config.json",
    "model.safetensors",
)


def artefact_hash(folder: str | Path) -> str:
    """SHA-256 over an adapter's (or model's) weight and config files."""
    root = Path(folder)
    digest = hashlib.sha256()
    found = False
    for name in _ARTEFACT_FILES:
        path = root / name
        if path.is_file():
            found = True
            digest.update(name.encode())
            with path.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
    if not found:
        raise FileNotFoundError(f"{str(root)!r} holds no adapter or model files")
    return digest.hexdigest()


def cache_key(**parts: Any) -> str:
    """A stable key of JSON-serialisable parts."""
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class EvalCache:
    """Evaluation results on disk, one JSON file per key.

    Args:
        root: The cache folder (created on first write).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored result, or None (also for an unreadable entry, which is then recomputed)."""
        path = self._path(key)
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def put(self, key: str, value: Mapping[str, Any]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(value))
        os.replace(tmp, path)
