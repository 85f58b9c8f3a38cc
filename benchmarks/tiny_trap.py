"""The proxy trap in real training: dev and external accuracy against the template-share knob.

For one weak domain, LoRA SFT (trl) of the tiny local base on that domain's training data with a
share ``s`` of it phrased like the dev split, for several shares and seeds. Dev is the
dev-phrased split, external the held-out phrasings (all 2 x external_items/2 items, public and
private halves together). Also prints the base's accuracy, training tokens per second and
evaluation samples per second. Everything runs on CPU; the base is built once into the cache.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tiny_trap.py \
        [--domain roman_numerals] [--shares 0 0.25 0.5 0.75 1] [--seeds 1 2 3] \
        [--full-modules mlp+embeddings] [--json]
"""

from __future__ import annotations

import os

# One thread per process before anything imports torch (overridable), as in the CLI.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from searchlab_evaluation.puzzles import FAMILIES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domain", default="roman_numerals", choices=FAMILIES)
    parser.add_argument("--shares", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--target-modules", default="attention")
    parser.add_argument("--full-modules", default="none", help="trained in full beside LoRA")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "searchlab-bench"))
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--base-template-share",
        type=float,
        default=None,
        help="share of the tiny base's data in the dev phrasing (default: the base's own, 0.1)",
    )
    parser.add_argument("--examples", type=int, default=512, help="training examples per run")
    parser.add_argument("--dev-items", type=int, default=64)
    parser.add_argument("--external-items", type=int, default=128)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from searchlab_evaluation.generate import generate, load_base
    from searchlab_evaluation.scoring import grade_samples, per_domain_accuracy
    from searchlab_training.backend import PostTrainingBackend

    backend = PostTrainingBackend(
        domains=[args.domain],
        weights={},
        seed=0,
        cache_dir=args.cache,
        device=args.device,
        examples=args.examples,
        dev_items=args.dev_items,
        external_items=args.external_items,
        **(
            {"tiny": {"template_share": args.base_template_share}}
            if args.base_template_share is not None
            else {}
        ),
    )
    started = time.perf_counter()
    base = backend.base_path()
    build = json.loads((base / "build.json").read_text())
    base_s = time.perf_counter() - started

    model, tokenizer = load_base(base, device=backend.device)
    base_acc = {}
    for split in ("dev", "external"):
        items = backend.items(split)
        completions, _ = generate(model, tokenizer, [i.prompt for i in items], backend.generation)
        base_acc[split] = per_domain_accuracy(grade_samples(items, completions))[args.domain][0]

    rows = []
    for share in args.shares:
        for seed in args.seeds:
            recipe = {
                "learning_rate": args.learning_rate,
                "steps": args.steps,
                "lora_rank": args.rank,
                "target_modules": args.target_modules,
                "full_modules": args.full_modules,
                f"template_share_{args.domain}": share,
            }
            artefact = backend.train(recipe, candidate=0, seed=seed)
            dev = backend.evaluate(artefact)[args.domain][0]
            external = per_domain_accuracy(backend.samples(artefact, "external"))[args.domain][0]
            rows.append(
                {
                    "share": share,
                    "seed": seed,
                    "dev": dev,
                    "external": external,
                    "private": backend.private_external(artefact)[args.domain],
                    "train_tokens_per_s": artefact["tokens_per_s"],
                }
            )
    eval_rates = [
        entry["samples_per_s"]
        for entry in (
            json.loads(p.read_text()) for p in (Path(args.cache) / "evaluations").rglob("*.json")
        )
        if entry.get("samples_per_s")
    ]
    summary = {
        "domain": args.domain,
        "device": backend.device,
        "base": {
            "key": build["key"],
            "parameters": build["parameters"],
            "build_seconds": build["seconds"],
            "seconds_this_run": round(base_s, 1),
            "dev": base_acc["dev"],
            "external": base_acc["external"],
        },
        "rows": rows,
        "median_train_tokens_per_s": statistics.median(r["train_tokens_per_s"] for r in rows),
        "median_eval_samples_per_s": statistics.median(eval_rates) if eval_rates else None,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(
        f"base {build['key']} ({build['parameters']} parameters, built in {build['seconds']} s): "
        f"{args.domain} dev {base_acc['dev']:.3f}, external {base_acc['external']:.3f}"
    )
    print(f"{'share':>6} {'dev':>22} {'external':>22}   (per seed; median)")
    for share in args.shares:
        sel = [r for r in rows if r["share"] == share]
        dev = " ".join(f"{r['dev']:.3f}" for r in sel)
        ext = " ".join(f"{r['external']:.3f}" for r in sel)
        print(
            f"{share:6.2f} {dev:>16} {statistics.median(r['dev'] for r in sel):.3f}"
            f" {ext:>16} {statistics.median(r['external'] for r in sel):.3f}"
        )
    print(
        f"training {summary['median_train_tokens_per_s']:.0f} tokens/s (median), "
        f"evaluation {summary['median_eval_samples_per_s']:.0f} samples/s (median), "
        f"device {backend.device}"
    )


if __name__ == "__main__":
    main()
