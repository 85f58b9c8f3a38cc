"""Checks the evaluator's dev accuracy against three independent computations.

One LoRA adapter (trained here by the post-training back end, or given with ``--adapter``) is
evaluated with ``PostTrainingBackend.evaluate``; its graded dev samples are then read back from
the evaluation cache (``<cache>/evaluations/**/<key>.json``) and checked three ways:

A. the saved completions re-graded by a rule written here (no searchlab grader): the first line
   of the stripped completion, stripped, equal to the answer (case-sensitive, no tolerance);
B. every dev prompt regenerated ONE AT A TIME (no padding, no batching) with plain transformers
   and peft, greedy, 16 new tokens: how many completions equal the saved batched ones, and the
   accuracy (by the evaluator's grader, and by rule A);
C. lm-evaluation-harness in its own clean venv (``--lm-eval-venv PATH``, created and filled with
   pip when missing): the task of ``benchmarks/lm_eval_task/`` (generate_until, greedy,
   ``until: ["</s>"]``, 16 tokens, rule A as its metric) run by ``lm_eval --model hf`` with the
   base and the adapter, batch size 1, on CPU; per-domain accuracy and completions are compared.

Without ``--lm-eval-venv``, C is skipped (and says so). Everything runs on CPU, one thread.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/eval_check.py \
        [--domains roman_numerals gravity unit_conversion] [--dev-items 64] \
        [--adapter PATH] [--lm-eval-venv /tmp/lmeval-venv] [--json]
"""

from __future__ import annotations

import os

# One thread per process before anything imports torch (overridable), as in the CLI.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import glob
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

TASK_DIR = Path(__file__).resolve().parent / "lm_eval_task"
TASK_NAME = "searchlab_dev"
# What goes into the lm-eval venv: torch pinned to the CPU build (an unpinned torch pulls a CUDA
# build of several GB), then lm-eval and the model stack of the repo's own venv.
LM_EVAL_PINS = (["torch==2.13.0"], ["lm_eval==0.4.13", "transformers==5.24.0", "peft==0.21.2"])
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


# -- A: the rule written here ----------------------------------------------------------------


def first_line_match(completion: str, answer: str) -> bool:
    """The first line of the stripped completion, stripped, equals the stripped answer."""
    stripped = completion.strip()
    first = stripped.splitlines()[0].strip() if stripped else ""
    return first == answer.strip()


def accuracy_by_domain(
    domains: Sequence[str], samples: Sequence[Mapping[str, Any]], verdicts: Sequence[bool]
) -> dict[str, float]:
    """Share of ``True`` verdicts per domain (verdicts aligned with samples)."""
    counts = {d: [0, 0] for d in domains}
    for sample, ok in zip(samples, verdicts, strict=True):
        counts[sample["domain"]][0] += bool(ok)
        counts[sample["domain"]][1] += 1
    return {d: (c / n if n else float("nan")) for d, (c, n) in counts.items()}


def same_by_domain(
    domains: Sequence[str], samples: Sequence[Mapping[str, Any]], texts: Sequence[str]
) -> dict[str, int]:
    """How many regenerated texts equal the saved completion, per domain."""
    same = dict.fromkeys(domains, 0)
    for sample, text in zip(samples, texts, strict=True):
        same[sample["domain"]] += text == sample["completion"]
    return same


# -- the saved samples -----------------------------------------------------------------------


def find_saved_samples(
    cache_dir: Path, artefact: str, items: Sequence[Any]
) -> tuple[Path, list[dict[str, Any]], int]:
    """The dev samples of ``artefact`` in the evaluation cache whose items are ``items``.

    Returns the file, its samples and how many files matched (the newest is taken).
    """
    wanted = [[i.domain, i.prompt, i.answer] for i in items]
    matches: list[tuple[float, Path, list[dict[str, Any]]]] = []
    for name in glob.glob(str(cache_dir / "evaluations" / "**" / "*.json"), recursive=True):
        try:
            entry = json.loads(Path(name).read_text())
        except (OSError, ValueError):
            continue
        if entry.get("artefact") != artefact or entry.get("split") != "dev":
            continue
        samples = entry.get("samples") or []
        if [[s["domain"], s["prompt"], s["answer"]] for s in samples] == wanted:
            matches.append((float(entry.get("created", 0.0)), Path(name), samples))
    if not matches:
        raise SystemExit(f"no saved dev samples of artefact {artefact[:12]} under {cache_dir}")
    matches.sort(key=lambda m: m[0])
    return matches[-1][1], matches[-1][2], len(matches)


# -- B: one prompt at a time -----------------------------------------------------------------


def regenerate_one_by_one(
    base: Path, adapter: Path, prompts: Sequence[str], max_new_tokens: int
) -> tuple[list[str], dict[str, Any]]:
    """Greedy completions of each prompt alone (no padding), base plus adapter, float32, CPU."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, local_files_only=True)
    model = PeftModel.from_pretrained(model, adapter).eval()
    texts: list[str] = []
    bos_first = 0
    started = time.perf_counter()
    for prompt in prompts:
        enc = tokenizer(prompt, return_tensors="pt")
        bos_first += int(enc["input_ids"][0, 0]) == tokenizer.bos_token_id
        with torch.inference_mode():
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        texts.append(
            tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        )
    info = {"seconds": time.perf_counter() - started, "bos_first": bos_first}
    return texts, info


# -- C: lm-evaluation-harness in its own venv ------------------------------------------------


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without the repo venv, offline, one thread."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "__PYVENV_LAUNCHER__")
    }
    env.update(OFFLINE_ENV, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)
    return env


def _tail(text: str, lines: int = 1) -> str:
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(kept[-lines:])[:400] if kept else "(no output)"


def ensure_lm_eval_venv(venv: Path, log: list[str]) -> tuple[Path | None, str]:
    """The venv's python with lm_eval importable, creating and filling the venv when missing.

    Returns ``(python, "")`` or ``(None, reason)``.
    """
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import lm_eval, transformers, peft, torch"]
    if (
        python.is_file()
        and subprocess.run(probe, env=_clean_env(), capture_output=True).returncode == 0
    ):
        log.append(f"reused venv {venv}")
        return python, ""
    if not python.is_file():
        base_python = getattr(sys, "_base_executable", None) or sys.executable
        made = subprocess.run(
            [base_python, "-m", "venv", str(venv)], capture_output=True, text=True
        )
        if made.returncode != 0:
            return None, f"python -m venv {venv} failed: {_tail(made.stderr)}"
        log.append(f"created venv {venv} with {base_python}")
    for pins in LM_EVAL_PINS:
        started = time.perf_counter()
        done = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", *pins],
            env=_clean_env(),
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if done.returncode != 0:
            return None, f"pip install {' '.join(pins)} failed: {_tail(done.stderr, 2)}"
        log.append(f"pip install {' '.join(pins)}: {time.perf_counter() - started:.0f} s")
    check = subprocess.run(probe, env=_clean_env(), capture_output=True, text=True)
    if check.returncode != 0:
        return None, f"lm_eval does not import in {venv}: {_tail(check.stderr)}"
    return python, ""


def venv_versions(python: Path) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
        "('lm_eval', 'transformers', 'peft', 'torch', 'datasets')}))"
    )
    done = subprocess.run(
        [str(python), "-c", code], env=_clean_env(), capture_output=True, text=True
    )
    return json.loads(done.stdout) if done.returncode == 0 else {}


def run_lm_eval(
    python: Path, base: Path, adapter: Path, items: Sequence[Any], workdir: Path, timeout: int
) -> tuple[list[dict[str, Any]] | None, dict[str, Any]]:
    """Runs the task with ``lm_eval --model hf`` and returns its logged samples in item order.

    Returns ``(samples, info)``; ``samples`` is None when the run failed (``info["reason"]``).
    """
    data = workdir / "searchlab_dev.jsonl"
    with data.open("w", encoding="utf-8") as fh:
        for i, item in enumerate(items):
            row = {"idx": i, "domain": item.domain, "prompt": item.prompt, "answer": item.answer}
            fh.write(json.dumps(row) + "\n")
    out_dir = workdir / "lm_eval_out"
    lm_eval = python.parent / "lm_eval"
    command = [
        str(lm_eval) if lm_eval.is_file() else str(python),
        *([] if lm_eval.is_file() else ["-m", "lm_eval"]),
        "run",
        "--model", "hf",
        "--model_args", f"pretrained={base},peft={adapter},dtype=float32",
        "--tasks", TASK_NAME,
        "--include_path", str(TASK_DIR),
        "--batch_size", "1",
        "--device", "cpu",
        "--output_path", str(out_dir),
        "--log_samples",
    ]  # fmt: skip
    info: dict[str, Any] = {"command": " ".join(command)}
    started = time.perf_counter()
    try:
        done = subprocess.run(
            command,
            cwd=workdir,
            env=_clean_env(SEARCHLAB_LMEVAL_DATA=str(data)),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        info["reason"] = f"lm_eval ran past {timeout} s"
        return None, info
    info["seconds"] = time.perf_counter() - started
    (workdir / "lm_eval.log").write_text(done.stdout + "\n--- stderr ---\n" + done.stderr)
    if done.returncode != 0:
        info["reason"] = f"lm_eval exited {done.returncode}: {_tail(done.stderr, 2)}"
        return None, info
    sample_files = sorted(out_dir.glob(f"**/samples_{TASK_NAME}_*.jsonl"))
    result_files = sorted(out_dir.glob("**/results_*.json"))
    if not sample_files or not result_files:
        info["reason"] = f"lm_eval wrote no samples/results under {out_dir}"
        return None, info
    results = json.loads(result_files[-1].read_text())
    info["reported"] = results.get("results", {}).get(TASK_NAME, {})
    logged = [json.loads(line) for line in sample_files[-1].read_text().splitlines() if line]
    by_idx = {int(s["doc"]["idx"]): s for s in logged}
    if sorted(by_idx) != list(range(len(items))):
        info["reason"] = f"lm_eval logged {len(by_idx)} samples for {len(items)} items"
        return None, info
    ordered = [by_idx[i] for i in range(len(items))]
    # The context lm-eval actually generated from, to check it is the prompt unchanged.
    info["contexts_equal_prompts"] = sum(
        s["arguments"]["gen_args_0"]["arg_0"] == item.prompt
        for s, item in zip(ordered, items, strict=True)
    )
    return ordered, info


# -- the report ------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "   -  " if x is None else f"{100 * x:5.1f}%"


def print_table(report: dict[str, Any]) -> None:
    domains = report["domains"]
    rows = report["per_domain"]
    head = (
        f"{'domain':<16} {'n':>4}  {'eval':>6}  {'A':>6} {'A=ev':>5}  {'B grd':>6} {'B A':>6} "
        f"{'B same':>7}  {'C':>6} {'C=A':>4} {'C grd':>6} {'C same':>7}"
    )
    print(head)
    print("-" * len(head))
    for d in domains:
        r = rows[d]
        n = r["n"]
        c_ok = r.get("C") is not None
        print(
            f"{d:<16} {n:>4}  {_pct(r['evaluator'])}  {_pct(r['A'])} "
            f"{'yes' if r['A_equals_evaluator'] else 'NO':>5}  "
            f"{_pct(r['B_grader'])} {_pct(r['B_rule_A'])} {r['B_same']:>3}/{n:<3}  "
            f"{_pct(r.get('C'))} "
            f"{('yes' if r['C_equals_A'] else 'NO') if c_ok else '-':>4} "
            f"{_pct(r.get('C_grader'))} " + (f"{r['C_same']:>3}/{n:<3}" if c_ok else f"{'-':>7}")
        )
    print()
    print("eval  = PostTrainingBackend.evaluate (batched, left padding, searchlab grader)")
    print("A     = saved completions, first stripped line == answer (rule written here)")
    print("B     = one prompt at a time, transformers + peft; grd = searchlab grader, A = rule A;")
    print("        same = completions identical to the saved batched ones")
    print("C     = lm-evaluation-harness (hf, batch 1), metric rule A; grd = its completions")
    print("        graded by the searchlab grader; same = identical to the saved batched ones")
    print()
    print(f"adapter: {report['adapter']}")
    print(f"saved samples: {report['saved_file']} ({report['saved_matches']} matching file(s))")
    c = report["C"]
    print(f"C: {c['status']}")
    if c.get("versions"):
        print("C versions: " + ", ".join(f"{k} {v}" for k, v in c["versions"].items()))
    if c.get("contexts_equal_prompts") is not None:
        print(f"C contexts equal to the prompts: {c['contexts_equal_prompts']}/{report['n']}")
    if c.get("reported") is not None:
        print(f"C lm-eval reported: {c['reported']}")
    for what, key in (("A vs evaluator", "A_disagreements"), ("B vs saved", "B_differences"),
                      ("C vs saved", "C_differences")):  # fmt: skip
        rows_ = report.get(key) or []
        print(f"{what}: {len(rows_)} item(s) differ" + (":" if rows_ else ""))
        for row in rows_[:8]:
            print("   " + json.dumps(row, ensure_ascii=False))
        if len(rows_) > 8:
            print(f"   ... {len(rows_) - 8} more (see --json)")
    print("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in report["seconds"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--domains", nargs="+", default=["roman_numerals", "gravity", "unit_conversion"]
    )
    parser.add_argument("--dev-items", type=int, default=64)
    parser.add_argument("--adapter", help="an adapter folder (default: train one)")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "searchlab-bench"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lm-eval-venv", help="venv for lm-eval (created when missing)")
    parser.add_argument("--lm-eval-timeout", type=int, default=1800)
    parser.add_argument("--workdir", help="where C's JSONL and lm-eval output go (default: temp)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from searchlab_evaluation.cache import artefact_hash
    from searchlab_evaluation.grader import grade
    from searchlab_training.backend import PostTrainingBackend

    started = time.perf_counter()
    seconds: dict[str, float] = {}
    backend = PostTrainingBackend(
        domains=args.domains,
        weights={},
        seed=0,
        cache_dir=args.cache,
        device=args.device,
        dev_items=args.dev_items,
    )
    base = backend.base_path()
    if args.adapter:
        artefact: dict[str, Any] = {"adapter": str(Path(args.adapter).resolve())}
    else:
        t = time.perf_counter()
        recipe = {"learning_rate": args.learning_rate, "steps": args.steps, "lora_rank": args.rank}
        artefact = backend.train(recipe, candidate=0, seed=args.seed)
        seconds["train"] = time.perf_counter() - t
    adapter = Path(artefact["adapter"])
    t = time.perf_counter()
    evaluated = backend.evaluate(artefact)
    seconds["evaluate"] = time.perf_counter() - t

    items = backend.items("dev")
    saved_file, samples, n_matches = find_saved_samples(
        Path(args.cache).resolve(), artefact_hash(adapter), items
    )
    domains = list(args.domains)
    n = dict.fromkeys(domains, 0)
    for s in samples:
        n[s["domain"]] += 1

    # A: the saved completions, re-graded here.
    a_verdicts = [first_line_match(s["completion"], s["answer"]) for s in samples]
    acc_a = accuracy_by_domain(domains, samples, a_verdicts)
    a_disagree = [
        {"domain": s["domain"], "answer": s["answer"], "completion": s["completion"],
         "extracted": s["extracted"], "evaluator": s["correct"], "A": ok}
        for s, ok in zip(samples, a_verdicts, strict=True)
        if ok != bool(s["correct"])
    ]  # fmt: skip

    # B: one prompt at a time.
    t = time.perf_counter()
    prompts = [s["prompt"] for s in samples]
    b_texts, b_info = regenerate_one_by_one(
        base, adapter, prompts, backend.generation.max_new_tokens
    )
    seconds["B_generate"] = time.perf_counter() - t
    b_grader = [grade(x, s["answer"]) for x, s in zip(b_texts, samples, strict=True)]
    b_rule_a = [first_line_match(x, s["answer"]) for x, s in zip(b_texts, samples, strict=True)]
    b_same = same_by_domain(domains, samples, b_texts)
    b_diff = [
        {"domain": s["domain"], "answer": s["answer"], "batched": s["completion"], "single": x}
        for s, x in zip(samples, b_texts, strict=True)
        if x != s["completion"]
    ]

    # C: lm-evaluation-harness.
    c_report: dict[str, Any] = {}
    c_samples = None
    if not args.lm_eval_venv:
        c_report["status"] = "skipped: pass --lm-eval-venv"
    else:
        log: list[str] = []
        t = time.perf_counter()
        python, reason = ensure_lm_eval_venv(Path(args.lm_eval_venv).resolve(), log)
        seconds["C_venv"] = time.perf_counter() - t
        c_report["venv_log"] = log
        if python is None:
            c_report["status"] = f"unavailable: {reason}"
        else:
            c_report["versions"] = venv_versions(python)
            if args.workdir:
                workdir = Path(args.workdir).resolve()
                workdir.mkdir(parents=True, exist_ok=True)
            else:
                workdir = Path(tempfile.mkdtemp(prefix="eval-check-"))
            t = time.perf_counter()
            c_samples, c_info = run_lm_eval(
                python, base, adapter, items, workdir, args.lm_eval_timeout
            )
            seconds["C_lm_eval"] = time.perf_counter() - t
            c_report.update({k: v for k, v in c_info.items() if k != "reason"})
            c_report["workdir"] = str(workdir)
            c_report["status"] = (
                f"failed: {c_info['reason']} (log: {workdir / 'lm_eval.log'})"
                if c_samples is None
                else "ran"
            )
    per_domain: dict[str, dict[str, Any]] = {}
    c_diff: list[dict[str, Any]] = []
    if c_samples is not None:
        c_texts = [s["resps"][0][0] for s in c_samples]
        c_metric = [bool(s["exact_match"]) for s in c_samples]
        acc_c = accuracy_by_domain(domains, samples, c_metric)
        acc_c_grader = accuracy_by_domain(
            domains, samples, [grade(x, s["answer"]) for x, s in zip(c_texts, samples, strict=True)]
        )
        c_same = same_by_domain(domains, samples, c_texts)
        c_diff = [
            {"domain": s["domain"], "answer": s["answer"], "batched": s["completion"],
             "single": b, "lm_eval": x}
            for s, x, b in zip(samples, c_texts, b_texts, strict=True)
            if x != s["completion"]
        ]  # fmt: skip
        c_report["same_as_B"] = sum(x == b for x, b in zip(c_texts, b_texts, strict=True))
    acc_b_grader = accuracy_by_domain(domains, samples, b_grader)
    acc_b_a = accuracy_by_domain(domains, samples, b_rule_a)
    for d in domains:
        row: dict[str, Any] = {
            "n": n[d],
            "evaluator": evaluated[d][0],
            "A": acc_a[d],
            "A_equals_evaluator": abs(acc_a[d] - evaluated[d][0]) < 1e-12,
            "B_grader": acc_b_grader[d],
            "B_rule_A": acc_b_a[d],
            "B_same": b_same[d],
        }
        if c_samples is not None:
            row.update(
                C=acc_c[d],
                C_equals_A=abs(acc_c[d] - acc_a[d]) < 1e-12,
                C_equals_evaluator=abs(acc_c[d] - evaluated[d][0]) < 1e-12,
                C_grader=acc_c_grader[d],
                C_same=c_same[d],
            )
        per_domain[d] = row
    seconds["total"] = time.perf_counter() - started
    report = {
        "domains": domains,
        "n": len(samples),
        "adapter": str(adapter),
        "base": str(base),
        "saved_file": str(saved_file),
        "saved_matches": n_matches,
        "per_domain": per_domain,
        "B_info": b_info,
        "C": c_report,
        "A_disagreements": a_disagree,
        "B_differences": b_diff,
        "C_differences": c_diff,
        "seconds": seconds,
    }
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print_table(report)


if __name__ == "__main__":
    main()
