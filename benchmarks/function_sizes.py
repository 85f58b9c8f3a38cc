"""Functions longer than a limit, in lines of code (the docstring not counted) and in all.

    python benchmarks/function_sizes.py [--limit 60] [--with-docstrings] [DIR ...]

Default folders: searchlab, training, evaluation. One line per function, longest first.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path


def sizes(folders: list[str]) -> list[tuple[int, int, str, str]]:
    rows = []
    for folder in folders:
        for path in sorted(Path(folder).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                total = node.end_lineno - node.lineno + 1
                first = node.body[0]
                is_doc = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                doc = first.end_lineno - first.lineno + 1 if is_doc else 0
                rows.append((total - doc, total, str(path), node.name))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", default=["searchlab", "training", "evaluation"])
    parser.add_argument("--limit", type=int, default=60)
    parser.add_argument("--with-docstrings", action="store_true")
    args = parser.parse_args()
    key = 1 if args.with_docstrings else 0
    over = sorted((r for r in sizes(args.folders) if r[key] > args.limit), reverse=True)
    for code, total, path, name in over:
        print(f"{code:4d} code {total:4d} all  {path} {name}")
    print(f"{len(over)} functions over {args.limit} lines")


if __name__ == "__main__":
    main()
