"""Re-checks the library facts of docs/FACTS.md marked "re-checked", on the installed versions.

    python benchmarks/check_facts.py            # the library facts (about a minute, offline)
    python benchmarks/check_facts.py --threads  # also the thread timing (idle machine only)

One line per fact, ``ok`` or ``CHANGED`` with what was seen; exit status 1 if any changed. Nothing
is downloaded: the tokenizer is built here, the datasets are made in memory.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def frozen_trial() -> str:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        study = optuna.create_study(storage=f"sqlite:///{tmp}/s.db")
        trial = study.ask()
        study.tell(trial, 1.0)
        try:
            study._storage.set_trial_user_attr(trial._trial_id, "x", 1)
        except optuna.exceptions.UpdateFinishedTrialError:
            return "ok: a finished trial's user attributes cannot be changed"
        return "CHANGED: a finished trial's user attribute was written"


def nan_fails() -> str:
    import optuna

    study = optuna.create_study()
    trial = study.ask()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.tell(trial, float("nan"))
    state = study.trials[0].state.name
    return f"{'ok' if state == 'FAIL' else 'CHANGED'}: a NaN value leaves the trial {state}"


def sft_bf16() -> str:
    from trl import SFTConfig

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the renamed field: its own check
        try:
            SFTConfig(output_dir=tmp)
        except ValueError as exc:
            if "bf16" in str(exc):
                SFTConfig(output_dir=tmp, use_cpu=True, bf16=False)
                return "ok: SFTConfig's defaults ask for bf16 (refused on CPU); use_cpu works"
            return f"CHANGED: SFTConfig() raised {exc}"
    return "CHANGED: SFTConfig's defaults were accepted on this machine"


def checkpointing_renamed() -> str:
    from transformers import TrainingArguments

    fields = TrainingArguments.__dataclass_fields__
    seen = []
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        TrainingArguments(output_dir=tmp, use_cpu=True, gradient_checkpointing=False)
        seen = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    renamed = "activation_checkpointing" in fields and any(
        "activation_checkpointing" in s for s in seen
    )
    gone = "warmup_ratio" not in fields
    ok = renamed and gone
    return (
        f"{'ok' if ok else 'CHANGED'}: gradient_checkpointing deprecated for "
        f"activation_checkpointing: {renamed}; warmup_ratio gone: {gone}"
    )


def interleave_counts() -> str:
    import datasets

    datasets.disable_progress_bars()
    parts = [
        datasets.Dataset.from_dict({"d": [n] * size})
        for n, size in (("a", 100), ("b", 50), ("c", 30))
    ]
    mixed = datasets.interleave_datasets(parts, probabilities=[0.5, 0.3, 0.2], seed=0)
    counts = collections.Counter(mixed["d"])
    got = [counts[k] for k in "abc"]
    total = sum(got)
    wanted = [round(total * p) for p in (0.5, 0.3, 0.2)]
    shown = "/".join(map(str, got))
    return (
        f"{'ok' if got != wanted else 'CHANGED'}: interleave_datasets 0.5/0.3/0.2 over "
        f"100/50/30 gave {shown} (the weights would be {'/'.join(map(str, wanted))})"
    )


def padding_side_saved() -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"<pad>": 0, "<unk>": 1, "a": 2}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    with tempfile.TemporaryDirectory() as tmp:
        late = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>")
        late.padding_side = "left"
        late.save_pretrained(f"{tmp}/late")
        early = PreTrainedTokenizerFast(
            tokenizer_object=tok, pad_token="<pad>", padding_side="left"
        )
        early.save_pretrained(f"{tmp}/early")
        sides = [
            AutoTokenizer.from_pretrained(f"{tmp}/{n}").padding_side for n in ("late", "early")
        ]
    ok = sides == ["right", "left"]
    return (
        f"{'ok' if ok else 'CHANGED'}: padding_side set after construction reloads as "
        f"{sides[0]!r}, given to the constructor as {sides[1]!r}"
    )


def threads() -> str:
    import numpy as np
    import torch

    from searchlab.surrogate import DomainSurrogate

    rng = np.random.default_rng(0)
    x = rng.random((100, 10))
    y = x[:, 0] + 0.1 * rng.standard_normal(100)
    out = []
    for n in (1, 2):
        torch.set_num_threads(n)
        s = DomainSurrogate(dim=10, simplex_groups=[], seed=0)
        t0 = time.perf_counter()
        s.fit(x, y, x[:20], y[:20] - 0.1)
        out.append(time.perf_counter() - t0)
    torch.set_num_threads(1)
    return (
        f"measured: a two-task GP fit at 100 + 20 points: {out[0]:.1f} s with one thread, "
        f"{out[1]:.1f} s with two"
    )


CHECKS: dict[str, Callable[[], str]] = {
    "optuna: finished trial": frozen_trial,
    "optuna: NaN value": nan_fails,
    "trl: SFTConfig on CPU": sft_bf16,
    "transformers: renamed arguments": checkpointing_renamed,
    "datasets: interleave counts": interleave_counts,
    "transformers: padding_side": padding_side_saved,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads", action="store_true", help="also time a GP fit at 1 and 2 threads"
    )
    args = parser.parse_args()
    checks = dict(CHECKS)
    if args.threads:
        checks["torch: threads"] = threads
    changed = 0
    for name, check in checks.items():
        try:
            line = check()
        except Exception as exc:  # a check that cannot run has changed too
            line = f"CHANGED: {type(exc).__name__}: {exc}"
        changed += line.startswith("CHANGED")
        print(f"{name}: {line}")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
