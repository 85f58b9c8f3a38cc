"""Whether two stored runs of one study are the same run: every searchlab attribute (the audit
included), every candidate's state, recipe and dev values. optuna-dashboard's figures and note
(study system attributes, written by the CLI's publisher) are not compared.

    python benchmarks/same_study.py sqlite:///before.db sqlite:///after.db [--study NAME]
        [--ignore FIELD ...]

Prints what differs, or ``identical``, and exits 1 if anything differs. A refactor that claims
"behaviour unchanged" runs one study file with the same seed before and after, then this.
``--ignore FIELD`` drops a field from every attribute that is an object (a field a change
added on purpose, such as a new key of each submission record), and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")


def snapshot(
    url: str, name: str | None, ignore: tuple[str, ...] = ()
) -> tuple[str, dict[str, Any], list[Any], int]:
    from searchlab.store import Storage

    storage = Storage(url)
    name = name or storage.names()[0]
    record = storage.load(name)
    candidates = [
        (c.number, str(c.state), c.recipe, c.dev, c.error, c.proposal) for c in record.candidates()
    ]
    attrs = json.loads(json.dumps(record.attrs, default=str))
    for value in attrs.values():
        if isinstance(value, dict):
            for field in ignore:
                value.pop(field, None)
    return name, attrs, candidates, len(record.audit_log())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--study", default=None, help="the study (default: the first one)")
    parser.add_argument("--ignore", action="append", default=[], help="a field to leave out")
    args = parser.parse_args()
    ignore = tuple(args.ignore)
    name, attrs_a, cands_a, audit = snapshot(args.before, args.study, ignore)
    _, attrs_b, cands_b, _ = snapshot(args.after, name, ignore)
    keys = sorted(set(attrs_a) | set(attrs_b))
    differ = [k for k in keys if attrs_a.get(k) != attrs_b.get(k)]
    for k in differ[:20]:
        before, after = (json.dumps(x.get(k))[:200] for x in (attrs_a, attrs_b))
        print(f"attribute {k}: {before} != {after}")
    moved = [a[0] for a, b in zip(cands_a, cands_b, strict=False) if a != b]
    if len(cands_a) != len(cands_b):
        print(f"candidates: {len(cands_a)} != {len(cands_b)}")
    if moved:
        print(f"candidates that differ: {moved[:20]}")
    if differ or moved or len(cands_a) != len(cands_b):
        return 1
    counts = f"{len(keys)} attributes, {audit} audit entries, {len(cands_a)} candidates"
    left_out = f"; left out: {', '.join(ignore)}" if ignore else ""
    print(f"{name}: identical ({counts}{left_out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
