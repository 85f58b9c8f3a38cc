"""The real post-training back end: a tiny local base, LoRA SFT and GRPO with trl, evaluation by
generation and grading, the evaluation cache, the leaderboard, and bad input.

Everything is real (transformers, peft, trl, datasets on CPU); only the model is small. The base
is built once per test session with a short spec (a few seconds). Skipped when the ``train``
extra is not installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("trl", reason="the train extra (transformers, peft, trl) is not installed")

from conftest import run_cli, sqlite_url, write_yaml

from searchlab.errors import BackendError
from searchlab_evaluation.grader import extract_answer
from searchlab_evaluation.puzzles import FAMILIES
from searchlab_training.backend import PostTrainingBackend
from searchlab_training.data import FileSource, PuzzleSource, build_examples, mixture_counts
from searchlab_training.tiny_model import TinyBaseSpec, build_tiny_base

ROOT = Path(__file__).resolve().parents[1]
# A base that builds in seconds: enough for the code paths, not for good accuracy.
TEST_SPEC = {"steps": 120, "examples_per_family": 200, "vocab_size": 384, "hidden_size": 64}
DOMAINS = ["roman_numerals", "gravity"]


@pytest.fixture(scope="session")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("searchlab-cache")
    build_tiny_base(folder, TinyBaseSpec(**TEST_SPEC))
    return folder


def _backend(cache: Path, **options: Any) -> PostTrainingBackend:
    return PostTrainingBackend(
        domains=list(options.pop("domains", DOMAINS)),
        weights={},
        seed=0,
        cache_dir=str(cache),
        tiny=TEST_SPEC,
        device="cpu",
        dev_items=16,
        external_items=32,
        **options,
    )


RECIPE = {"learning_rate": 2e-3, "steps": 8, "lora_rank": 4, "template_share": 0.5}


def test_tiny_base_is_deterministic_and_loads_offline(cache: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = TinyBaseSpec(**TEST_SPEC)
    first = build_tiny_base(cache, spec)
    assert build_tiny_base(cache, spec) == first  # cached: the same folder
    again = build_tiny_base(tmp_path, spec)  # a second, independent build
    from searchlab_evaluation.cache import artefact_hash

    assert artefact_hash(first) == artefact_hash(again)
    tok = AutoTokenizer.from_pretrained(first, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(first, local_files_only=True)
    assert model.config.model_type == "llama"
    assert tok.padding_side == "left"
    ids = tok("convert 82 g to mg")["input_ids"]
    assert ids[0] == tok.bos_token_id
    # Byte-level BPE: digits and spaces decode back exactly.
    assert tok.decode(ids, skip_special_tokens=True) == "convert 82 g to mg"
    build = json.loads((first / "build.json").read_text())
    assert build["loss_every_50_steps"][-1] < build["loss_every_50_steps"][0]


def test_mixture_counts_are_exact() -> None:
    assert mixture_counts({"a": 0.5, "b": 0.3, "c": 0.2}, 180) == {"a": 90, "b": 54, "c": 36}
    counts = mixture_counts({"a": 1, "b": 1, "c": 1}, 100)
    assert sum(counts.values()) == 100 and sorted(counts.values()) == [33, 33, 34]
    with pytest.raises(BackendError, match="sum to 0"):
        mixture_counts({"a": 0.0}, 10)


def test_template_share_draws_exact_counts() -> None:
    examples, digest = build_examples(
        PuzzleSource(), {"cipher": 3, "gravity": 1}, {"cipher": 0.25}, 200, seed=3
    )
    cipher = [e for e in examples if e.domain == "cipher"]
    assert len(cipher) == 150 and sum(e.template for e in cipher) == 38  # round(150 * 0.25)
    assert not any(e.template for e in examples if e.domain == "gravity")
    again, digest2 = build_examples(
        PuzzleSource(), {"cipher": 3, "gravity": 1}, {"cipher": 0.25}, 200, seed=3
    )
    assert digest == digest2 and again == examples


def test_sft_candidate_trains_evaluates_and_submits(cache: Path) -> None:
    backend = _backend(cache)
    artefact = backend.train(RECIPE, candidate=0, seed=1)
    folder = Path(artefact["adapter"])
    assert (folder / "adapter_model.safetensors").is_file()
    record = json.loads((folder / "searchlab.json").read_text())
    assert record["recipe"]["rank"] == 4 and record["data_hash"] == artefact["data_hash"]
    assert record["curve"] and record["tokens"] > 0
    dev = backend.evaluate(artefact)
    assert set(dev) == set(DOMAINS) and all(n == 16 for _, n in dev.values())
    public = backend.submit_external(artefact, submission=0)
    assert set(public) == set(DOMAINS)
    # Floored to 0.01 and computed on the public half (16 of 32 items).
    assert all(abs(v * 100 - round(v * 100)) < 1e-9 for v in public.values())
    assert backend.recover_external(artefact, submission=0) == public
    assert backend.recover_external(artefact, submission=7) is None


def test_accuracy_agrees_with_saved_samples_and_cache_is_used(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = _backend(cache)
    artefact = backend.train(RECIPE, candidate=1, seed=2)
    dev = backend.evaluate(artefact)
    entries = list((cache / "evaluations").rglob("*.json"))
    saved = [json.loads(p.read_text()) for p in entries]
    mine = next(e for e in saved if e["artefact"] == artefact["hash"] and e["split"] == "dev")
    # Independent re-computation: exact match of the first line of each completion (the tiny
    # model answers on one line), without the grader's extraction rules.
    for domain in DOMAINS:
        rows = [s for s in mine["samples"] if s["domain"] == domain]
        first_line = [(s["completion"].strip().splitlines() or [""])[0].strip() for s in rows]
        plain = sum(c.lower() == s["answer"].lower() for c, s in zip(first_line, rows, strict=True))
        assert plain / len(rows) == pytest.approx(dev[domain][0])
        assert all(s["extracted"] == extract_answer(s["completion"]) for s in rows)

    # A second evaluation of the same artefact is served from the cache: generation is off.
    import searchlab_evaluation.generate as generation

    monkeypatch.setattr(generation, "generate", lambda *a, **k: pytest.fail("not cached"))
    assert backend.evaluate(artefact) == dev


def test_full_modules_train_in_full_and_are_read_back(cache: Path) -> None:
    """``full_modules`` trains whole modules beside LoRA (peft's modules_to_save): they are saved
    with the adapter and the evaluation loads them, so the scores are those of the trained MLPs."""
    from safetensors import safe_open

    backend = _backend(cache)
    recipe = {**RECIPE, "learning_rate": 5e-3, "steps": 12}
    full = backend.train({**recipe, "full_modules": "mlp"}, candidate=4, seed=5)
    lora = backend.train(recipe, candidate=4, seed=5)
    with safe_open(Path(full["adapter"]) / "adapter_model.safetensors", "pt") as f:
        names = list(f.keys())
    assert any(".mlp." in n and "lora_" not in n for n in names), names
    record = json.loads((Path(full["adapter"]) / "searchlab.json").read_text())
    assert record["recipe"]["full_modules"] == "mlp"
    # Different weights, so different generations (on 64 prompts, at least one).
    completions = {
        k: [s["completion"] for s in backend.samples(a, "external")]
        for k, a in (("full", full), ("lora", lora))
    }
    assert completions["full"] != completions["lora"]


def test_grpo_recipe_trains(cache: Path) -> None:
    backend = _backend(cache, domains=["gravity"])
    recipe = {**RECIPE, "method": "grpo", "steps": 2, "batch_size": 8, "num_generations": 4}
    artefact = backend.train(recipe, candidate=2, seed=3)
    record = json.loads((Path(artefact["adapter"]) / "searchlab.json").read_text())
    assert record["recipe"]["method"] == "grpo"
    assert any("reward" in row for row in record["curve"])
    assert set(backend.evaluate(artefact)) == {"gravity"}


# -- bad input ----------------------------------------------------------------------------------


def test_missing_model_path_is_a_clear_error(cache: Path, tmp_path: Path) -> None:
    backend = _backend(cache, model=str(tmp_path / "no-such-model"))
    with pytest.raises(BackendError, match=r"no-such-model.*no such local model folder"):
        backend.train(RECIPE, candidate=0, seed=0)
    assert any("no-such-model" in p for p in backend.preflight())


def test_corrupt_adapter_is_a_clear_error(cache: Path) -> None:
    backend = _backend(cache)
    artefact = backend.train(RECIPE, candidate=3, seed=4)
    weights = Path(artefact["adapter"]) / "adapter_model.safetensors"
    weights.write_bytes(b"this is not a safetensors file")
    with pytest.raises(BackendError, match="corrupt"):
        backend.evaluate(artefact)


def test_dataset_file_with_missing_columns(cache: Path, tmp_path: Path) -> None:
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"prompt": "1+1=", "answer": "2"}) + "\n")
    with pytest.raises(BackendError, match=r"train\[gravity\].*lacks column\(s\) \['completion'\]"):
        FileSource({"gravity": train})


def test_unknown_recipe_key_and_bad_values(cache: Path) -> None:
    backend = _backend(cache)
    with pytest.raises(BackendError, match="recipe key 'lora_rnak'"):
        backend.train({**RECIPE, "lora_rnak": 4}, candidate=0, seed=0)
    with pytest.raises(BackendError, match="lora_rank 0 must be a positive integer"):
        backend.train({**RECIPE, "lora_rank": 0}, candidate=0, seed=0)
    with pytest.raises(BackendError, match="full_modules 'everything': expected one of"):
        backend.train({**RECIPE, "full_modules": "everything"}, candidate=0, seed=0)
    with pytest.raises(BackendError, match="unknown key"):
        _backend(cache, evaluatr="vllm")


def test_crashing_training_run_is_reported(cache: Path) -> None:
    """peft refuses a target module the model does not have: the run fails inside trl."""
    backend = _backend(cache)
    expected = r"training failed: \w+Error: .*no_such_proj.* not found"
    with pytest.raises(BackendError, match=expected):
        backend.train({**RECIPE, "target_modules": ["no_such_proj"]}, candidate=0, seed=0)


def test_lora_rank_vllm_cannot_serve(cache: Path) -> None:
    backend = _backend(cache, evaluator="vllm", vllm={"max_lora_rank": 16})
    with pytest.raises(BackendError, match="LoRA rank 32 cannot be served by vLLM"):
        backend.train({**RECIPE, "lora_rank": 32}, candidate=0, seed=0)
    with pytest.raises(BackendError, match="full_modules 'mlp': vLLM serves LoRA adapters"):
        backend.train({**RECIPE, "full_modules": "mlp"}, candidate=0, seed=0)


def test_vllm_missing_is_reported_not_faked(cache: Path) -> None:
    from searchlab_evaluation.vllm_generator import vllm_available

    ok, _ = vllm_available(sys.executable)
    if ok:
        pytest.skip("vLLM is installed here; this test covers its absence")
    backend = _backend(cache, evaluator="vllm", vllm={"max_lora_rank": 8})
    artefact = backend.train(RECIPE, candidate=4, seed=5)
    with pytest.raises(BackendError, match="vLLM is not usable"):
        backend.evaluate(artefact)


def test_out_of_memory_training_is_reported(cache: Path, tmp_path: Path) -> None:
    """A real out-of-memory: the training process runs under an address-space limit."""
    script = textwrap.dedent(
        f"""
        import resource, sys
        from searchlab.errors import BackendError
        from searchlab_training.backend import PostTrainingBackend
        b = PostTrainingBackend(domains=["gravity"], weights={{}}, seed=0,
                                cache_dir={str(cache)!r}, tiny={TEST_SPEC!r}, device="cpu",
                                examples=2048)
        b.base_path()
        import torch, trl, peft  # everything loaded before the limit
        used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (used + 400 * 2**20, resource.RLIM_INFINITY))
        try:
            b.train({{"learning_rate": 1e-3, "steps": 1, "batch_size": 2048, "lora_rank": 4,
                      "max_length": 128}}, candidate=0, seed=0)
        except BackendError as exc:
            print("BACKEND-ERROR", exc)
            sys.exit(0)
        print("NO ERROR")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ},
        check=False,
    )
    assert "BACKEND-ERROR" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert "out of memory" in proc.stdout


def test_study_with_real_backend_fails_bad_candidates_and_goes_on(
    cache: Path, tmp_path: Path
) -> None:
    """Two rounds of real training: a recipe with LoRA rank 0 fails with its reason, others run."""
    study = {
        "name": "tiny-real",
        "seed": 0,
        "domains": [{"name": d} for d in DOMAINS],
        "space": {
            "mixture": {"type": "mixture", "domains": DOMAINS},
            "learning_rate": {"type": "float", "low": 1e-3, "high": 3e-3, "log": True},
            "lora_rank": {"type": "categorical", "choices": [4, 0]},
        },
        "backend": {
            "name": "post-training",
            "options": {
                "cache_dir": str(cache),
                "tiny": TEST_SPEC,
                "device": "cpu",
                "dev_items": 8,
                "external_items": 16,
                "defaults": {"steps": 4},
            },
        },
        "rounds": {"candidates": 3, "count": 2},
        "external": {"per_round": 1, "total": 2},
        "policy": {"switch": False},  # too few submissions for the test
    }
    path = write_yaml(tmp_path / "real.yaml", study)
    storage = sqlite_url(tmp_path / "real.db")
    proc = run_cli("study", "create", str(path), "--storage", storage, "--quiet", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    status = json.loads(
        run_cli("study", "status", "tiny-real", "--storage", storage, "--json").stdout
    )
    assert status["finished"] is True
    assert status["failed_candidates"] >= 1 and status["candidates"] >= 1, status
    assert status["external_budget"]["used"] >= 1
    audit = json.loads(
        run_cli("study", "audit", "tiny-real", "--storage", storage, "--json").stdout
    )
    reasons = [e["reason"] for e in audit if e["kind"] == "candidate_failed"]
    assert reasons and all("lora_rank 0 must be a positive integer" in r for r in reasons)


def test_study_files_validate() -> None:
    root = Path(__file__).resolve().parents[1] / "studies"
    for name in ("tiny-reasoning.yaml", "tiny-trap.yaml", "nemotron-30b.yaml"):
        proc = run_cli("study", "validate", str(root / name))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert ": ok (" in proc.stdout
    assert all(f in FAMILIES for f in ("cipher", "equations"))


def test_validate_maps_a_recipe_through_the_back_end(tmp_path: Path) -> None:
    """A search key the back end does not know fails `study validate`, not round 0."""
    import yaml

    root = Path(__file__).resolve().parents[1] / "studies"
    data = yaml.safe_load((root / "tiny-reasoning.yaml").read_text())
    data["space"]["lora_rnak"] = {"type": "int", "low": 2, "high": 8}
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(data))
    proc = run_cli("study", "validate", str(path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "recipe key 'lora_rnak'" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_model_by_hub_id_from_the_local_cache_only(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hub id loads when the local Hugging Face cache holds it, and is a clear error if not."""
    import shutil

    from searchlab_evaluation.generate import load_base

    hf_home = tmp_path / "hf"
    snapshot = hf_home / "hub" / "models--local--tiny" / "snapshots" / ("0" * 40)
    shutil.copytree(build_tiny_base(cache, TinyBaseSpec(**TEST_SPEC)), snapshot)
    (hf_home / "hub" / "models--local--tiny" / "refs").mkdir()
    (hf_home / "hub" / "models--local--tiny" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_home / "hub"))
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    model, tokenizer = load_base("local/tiny", device="cpu")
    assert model.config.model_type == "llama" and tokenizer.padding_side == "left"
    assert _backend(cache, model="local/tiny").preflight() == []
    with pytest.raises(BackendError, match="nor in the local Hugging Face cache"):
        load_base("nvidia/not-cached-here", device="cpu")
    assert "not-cached" in _backend(cache, model="nvidia/not-cached-here").preflight()[0]


def test_user_data_files_train_and_evaluate(cache: Path, tmp_path: Path) -> None:
    """Training, dev and external data from files the user supplies (the nemotron-30b path)."""
    from searchlab_evaluation.puzzles import make_split

    def write(path: Path, rows: list[dict[str, Any]]) -> str:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(path)

    train = [
        {"prompt": p.prompt, "completion": " " + p.answer, "template": p.split != "train_generic"}
        for split in ("train_generic", "train_template")
        for p in make_split("gravity", split, 40, seed=0)
    ]
    dev = [
        {"prompt": p.prompt, "answer": p.answer} for p in make_split("gravity", "dev", 12, seed=0)
    ]
    ext = [
        {"prompt": p.prompt, "answer": p.answer}
        for p in make_split("gravity", "external", 20, seed=0)
    ]
    data = {
        "train": {"gravity": write(tmp_path / "train.jsonl", train)},
        "dev": {"gravity": write(tmp_path / "dev.jsonl", dev)},
        "external": {"gravity": write(tmp_path / "external.jsonl", ext)},
    }
    backend = _backend(cache, domains=["gravity"], data=data, examples=64)
    assert backend.preflight() == []
    artefact = backend.train({**RECIPE, "template_share_gravity": 0.25}, candidate=5, seed=6)
    assert backend.evaluate(artefact)["gravity"][1] == 12
    assert set(backend.submit_external(artefact, submission=0)) == {"gravity"}
    examples = backend.source.draw("gravity", 48, 16, seed=1)
    assert sum(e.template for e in examples) == 16
    assert all(e.answer == e.completion.strip() for e in examples)


def test_real_trap_benchmark_runs_both_arms_on_the_same_candidates(
    cache: Path, tmp_path: Path
) -> None:
    """The small version of benchmarks/real_trap.py: a real study, as written and dev-only, with
    the same seed. The arms share their warm-up (same recipes, same training seeds, so the same
    dev scores), and each reports private external scores, wall time and peak memory."""
    study = {
        "name": "trap-small",
        "seed": 3,
        "domains": [{"name": d} for d in DOMAINS],
        "space": {
            "learning_rate": {"type": "float", "low": 1e-3, "high": 3e-3, "log": True},
            "template_share": {"type": "float", "low": 0.0, "high": 1.0},
        },
        "backend": {
            "name": "post-training",
            "options": {
                "tiny": TEST_SPEC,
                "device": "cpu",
                "dev_items": 8,
                "external_items": 16,
                "template_domains": ["roman_numerals"],
                "defaults": {"steps": 3, "lora_rank": 4, "full_modules": "mlp"},
            },
        },
        "rounds": {"candidates": 3, "count": 3},
        "external": {"per_round": 2, "total": 6},
        "policy": {"threshold": 20},
    }
    file = write_yaml(tmp_path / "trap-small.yaml", study)
    work = tmp_path / "work"

    def bench(*args: str) -> subprocess.CompletedProcess[str]:
        script = ROOT / "benchmarks" / "real_trap.py"
        command = [sys.executable, str(script), "--study", str(file), "--workdir", str(work)]
        return subprocess.run(
            [*command, "--seeds", "3", *args, "--json"],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )

    proc = bench()
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    runs = {r["arm"]: r for r in out["runs"]}
    assert set(runs) == {"searchlab", "dev-only"}
    for r in runs.values():
        assert r["candidates"] == 9 and r["submissions"] == 6 and r["failed"] == 0
        for key in ("recommendation", "best_dev"):
            assert 0.0 <= r[key]["private"] <= 1.0
            assert set(r[key]["per_domain"]) == set(DOMAINS)
        assert r["wall_s"] > 0 and r["peak_rss_mb"] > 50
    assert out["paired_seeds"] == [3] and len(out["searchlab_minus_dev_only"]) == 1
    # The same warm-up in both arms: same recipes, same seeds, the same real dev scores.
    from searchlab.readmodel import read
    from searchlab.store import Storage

    warmup = {}
    for arm in runs:
        view = read(
            Storage(sqlite_url(work / f"{arm}-seed3" / "study.db")).load(f"trap-small-{arm}-3")
        )
        warmup[arm] = [(c.recipe, c.dev) for n, c in sorted(view.complete.items()) if c.round == 0]
    assert len(warmup["searchlab"]) == 3 and warmup["searchlab"] == warmup["dev-only"]
    # A finished run is read back, not run again.
    again = bench("--arms", "dev-only")
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(again.stdout)["runs"][0]["wall_s"] == runs["dev-only"]["wall_s"]
