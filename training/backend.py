"""The real post-training back end: LoRA training with trl, evaluation by generation and grading.

A study file selects it with ``backend: {name: post-training, options: {...}}``. Per candidate:

1. the recipe becomes training data (:mod:`searchlab_training.data`: exact mixture counts, a
   template-share knob) and a LoRA adapter trained with trl on the base
   (:mod:`searchlab_training.lora`);
2. ``evaluate`` generates greedily on the dev split of every domain (transformers here, or vLLM in
   its own process) and grades with the challenge's rules;
3. ``submit_external`` does the same on the external split and scores it on the leaderboard
   (:mod:`searchlab_evaluation.leaderboard`: public half floored, private half kept hidden).

Every evaluation is cached by artefact content, split, task version and generation settings
(:mod:`searchlab_evaluation.cache`), so an external score is never computed twice.

The base is ``model: tiny`` (built locally and cached, :mod:`searchlab_training.tiny_model`) or
a local folder of any causal LM (a real model, such as Nemotron-3-Nano-30B-A3B, on GPUs). Nothing
is downloaded: a hub id that is not a local folder is an error.

Recipe keys (the study's search space names them): ``mixture.<domain>``, ``learning_rate``,
``epochs``, ``steps``, ``batch_size``, ``lora_rank``, ``lora_alpha``, ``lora_dropout``,
``target_modules``, ``full_modules`` (modules trained in full beside the adapter), ``method``
(``sft`` or ``grpo``), ``num_generations``, ``template_share`` (applied to ``template_domains``)
and ``template_share_<domain>``. Any other key is an error naming it. ``options.defaults``
gives values for keys the space does not search.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from searchlab.errors import BackendError
from searchlab_evaluation.cache import EvalCache, artefact_hash, cache_key
from searchlab_evaluation.generate import resolve_device
from searchlab_evaluation.leaderboard import Leaderboard
from searchlab_evaluation.puzzles import FAMILIES, TASK_VERSION, make_split
from searchlab_evaluation.scoring import Item, grade_samples, items_hash, per_domain_accuracy
from searchlab_evaluation.vllm_generator import check_lora_rank, generate_vllm
from searchlab_training.data import FileSource, PuzzleSource, build_examples, read_rows
from searchlab_training.lora import LoraRecipe, train_adapter
from searchlab_training.options import PostTrainingOptions, parse_options
from searchlab_training.tiny_model import build_tiny_base

# Recipe key -> LoraRecipe field.
_RECIPE_FIELDS = {
    "method": "method",
    "learning_rate": "learning_rate",
    "epochs": "epochs",
    "steps": "steps",
    "batch_size": "batch_size",
    "lora_rank": "rank",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "target_modules": "target_modules",
    "full_modules": "full_modules",
    "num_generations": "num_generations",
    "max_length": "max_length",
}


class PostTrainingBackend:
    """LoRA post-training (trl) and graded generation (transformers or vLLM) of real models.

    Args:
        domains: The study's domains. With puzzle data, each must be a puzzle family.
        weights: The study's objective weights (unused: the engine weights the scores).
        seed: The study seed.
        model: ``"tiny"`` for the locally built tiny base, or a local model folder.
        tiny: :class:`~searchlab_training.tiny_model.TinyBaseSpec` fields for ``model: tiny``.
        cache_dir: Holds the tiny base, adapters, the evaluation cache and the leaderboard log.
        data: ``"puzzles"``, or ``{"train": {domain: file}, "dev": {...}, "external": {...}}``;
            training files need ``prompt`` and ``completion`` columns (``template`` optional),
            dev and external files ``prompt`` and ``answer``.
        examples: Training examples per candidate.
        dev_items: Dev items per domain (puzzles).
        external_items: External items per domain (puzzles), half public, half private.
        data_seed: Seeds the dev and external items (the same for every study by default).
        template_domains: Domains the recipe's plain ``template_share`` applies to (all when None).
        defaults: Recipe values for keys the search space does not contain.
        evaluator: ``transformers`` or ``vllm``.
        vllm: :class:`~searchlab_evaluation.vllm_generator.VllmSettings` fields.
        generation: :class:`~searchlab_evaluation.generate.GenerationSettings` fields.
        device: ``auto``, ``cpu`` or ``cuda``.
        dtype: The base's dtype when loaded (``auto``, ``bfloat16``, ``float32``).
        leaderboard: ``resolution`` and ``total`` (submissions) of the external target.
    """

    def __init__(
        self,
        *,
        domains: list[str],
        weights: Mapping[str, float],
        seed: int,
        **options: Any,
    ) -> None:
        opts = parse_options(options)
        import datasets

        # One bar per dataset map per candidate would flood a study's output.
        datasets.disable_progress_bars()
        self.domains = list(domains)
        self.seed = seed
        self.model_name = opts.model
        self.cache_dir = Path(opts.cache_dir).resolve()
        self.examples = opts.examples
        self.data_seed = opts.data_seed
        self.template_domains = list(opts.template_domains or self.domains)
        strangers = [d for d in self.template_domains if d not in self.domains]
        if strangers:
            raise BackendError(
                f"backend.options.template_domains: {strangers} are not domains of the study"
            )
        self.defaults = dict(opts.defaults)
        self.device = resolve_device(opts.device)
        self.dtype = opts.dtype
        self.evaluator = opts.evaluator
        self.generation = opts.generation_settings
        self.vllm = opts.vllm_settings
        self.tiny_spec = opts.tiny_spec
        self.cache = EvalCache(self.cache_dir / "evaluations")
        for key in self.defaults:
            self._check_recipe_key(key)

        self._dev_items = opts.dev_items
        self._external_items = opts.external_items
        self.data_files = self._data_files(opts)
        self._source: PuzzleSource | FileSource | None = None
        self._items: dict[str, list[Item]] = {}
        # The engine plans per-round submissions itself (external.per_round); the leaderboard
        # enforces its own total, as a real one would.
        self._board = opts.leaderboard.model_dump(exclude_none=True)
        self._leaderboard: Leaderboard | None = None
        self._base_path: Path | None = None

    def _data_files(self, opts: PostTrainingOptions) -> dict[str, dict[str, str]] | None:
        """Per split, the file of each domain; None for the built-in puzzles."""
        if opts.data == "puzzles":
            not_puzzles = [d for d in self.domains if d not in FAMILIES]
            if not_puzzles:
                raise BackendError(
                    f"domains {not_puzzles} are not puzzle families {list(FAMILIES)}; "
                    "give backend.options.data files for them"
                )
            return None
        out = {}
        for split in ("train", "dev", "external"):
            files = getattr(opts.data, split)
            missing = [d for d in self.domains if d not in files]
            if missing:
                raise BackendError(f"backend.options.data.{split}: no file for domain(s) {missing}")
            out[split] = {d: files[d] for d in self.domains}
        return out

    # -- data, loaded on first use (``validate`` constructs the back end without its data) ----

    def preflight(self) -> list[str]:
        """What would stop a run that construction does not check: missing model or data files."""
        problems = []
        if self.model_name != "tiny" and not _model_is_local(self.model_name):
            problems.append(
                f"model {self.model_name!r} is neither a local model folder nor in the local "
                "Hugging Face cache (yet)"
            )
        for split, files in (self.data_files or {}).items():
            problems += [
                f"data.{split}[{d}]: {path!r} does not exist (yet)"
                for d, path in files.items()
                if not Path(path).is_file()
            ]
        return problems

    @property
    def source(self) -> PuzzleSource | FileSource:
        """Where training examples come from."""
        if self._source is None:
            self._source = (
                PuzzleSource() if self.data_files is None else FileSource(self.data_files["train"])
            )
        return self._source

    def items(self, split: str) -> list[Item]:
        """The dev or external items, every domain, in a fixed order."""
        if split not in self._items:
            if self.data_files is None:
                n = self._dev_items if split == "dev" else self._external_items
                self._items[split] = _puzzle_items(self.domains, split, n, seed=self.data_seed)
            else:
                self._items[split] = _file_items(self.domains, self.data_files[split], split)
        return self._items[split]

    @property
    def leaderboard(self) -> Leaderboard:
        """The external target over the external items."""
        if self._leaderboard is None:
            board = self._board
            self._leaderboard = Leaderboard(
                items=self.items("external"),
                resolution=float(board.get("resolution", 0.01)),
                total=board.get("total"),
                log_path=self.cache_dir / "leaderboard" / f"study-seed{self.seed}.jsonl",
                seed=self.data_seed,
            )
        return self._leaderboard

    # -- the recipe ---------------------------------------------------------------------------

    def _check_recipe_key(self, key: str) -> None:
        if key in _RECIPE_FIELDS or key == "template_share":
            return
        # mixture.<domain> comes from a mixture group of the space; template_share_<domain> is
        # a plain parameter, and space parameter names must be identifiers.
        if any(key in (f"mixture.{d}", f"template_share_{d}") for d in self.domains):
            return
        raise BackendError(
            f"recipe key {key!r} is not known to the post-training back end; known: "
            f"{sorted([*_RECIPE_FIELDS, 'template_share'])}, mixture.<domain>, "
            "template_share_<domain>"
        )

    def check_recipe(self, recipe: Mapping[str, Any]) -> None:
        """Raises :class:`BackendError` for a recipe this back end cannot train (``study
        validate`` calls it on one recipe of the search space)."""
        self.parse_recipe(recipe)

    def parse_recipe(
        self, recipe: Mapping[str, Any]
    ) -> tuple[LoraRecipe, dict[str, float], dict[str, float]]:
        """The training settings, mixture weights and template shares of a recipe.

        Raises:
            BackendError: For an unknown key, or a value trl/peft/vLLM would reject.
        """
        merged = {**self.defaults, **recipe}
        for key in merged:
            self._check_recipe_key(key)
        lora_kwargs = {
            _RECIPE_FIELDS[k]: v for k, v in merged.items() if k in _RECIPE_FIELDS and v is not None
        }
        try:
            lora = LoraRecipe(**lora_kwargs)
        except TypeError as exc:
            raise BackendError(f"recipe: {exc}") from None
        if lora.rank < 1 or int(lora.rank) != lora.rank:
            raise BackendError(f"lora_rank {lora.rank!r} must be a positive integer")
        if not lora.learning_rate > 0:
            raise BackendError(f"learning_rate {lora.learning_rate!r} must be positive")
        lora.modules()  # validates target_modules
        lora.full()  # and full_modules
        if self.evaluator == "vllm":
            check_lora_rank(int(lora.rank), self.vllm)
            if lora.full():
                # vLLM's LoRA loader refuses adapters with modules_to_save (vllm#9280).
                raise BackendError(
                    f"full_modules {lora.full_modules!r}: vLLM serves LoRA adapters without "
                    "fully trained modules only; use evaluator: transformers or full_modules: none"
                )
        weights = {d: float(merged.get(f"mixture.{d}", 1.0)) for d in self.domains}
        shares = {d: float(merged.get(f"template_share_{d}", 0.0)) for d in self.domains}
        if "template_share" in merged:
            for d in self.template_domains:
                shares[d] = float(merged["template_share"])
        return lora, weights, shares

    # -- the protocol -------------------------------------------------------------------------

    def base_path(self) -> Path:
        """The base model folder (building the tiny base on first use)."""
        if self._base_path is None:
            if self.model_name == "tiny":
                self._base_path = build_tiny_base(self.cache_dir, self.tiny_spec)
            else:
                self._base_path = Path(self.model_name)
        return self._base_path

    def _load_base(self) -> tuple[Any, Any]:
        from searchlab_evaluation.generate import load_base

        # A fresh copy per call: peft injects LoRA layers into the model it wraps.
        return load_base(self.base_path(), device=self.device, dtype=self.dtype)

    def train(self, recipe: Mapping[str, Any], *, candidate: int, seed: int) -> dict[str, Any]:
        lora, weights, shares = self.parse_recipe(recipe)
        examples, data_hash = build_examples(self.source, weights, shares, self.examples, seed=seed)
        answers = [e.answer for e in examples] if lora.method == "grpo" else None
        model, tokenizer = self._load_base()
        # Same base, recipe and seed give the same adapter (training is deterministic), so a
        # name made of them can be shared; anything else gets its own folder.
        tag = hashlib.sha256(
            json.dumps(
                [str(self.base_path()), dict(recipe), seed], sort_keys=True, default=str
            ).encode()
        )
        out_dir = self.cache_dir / "adapters" / f"c{candidate}-{tag.hexdigest()[:12]}"
        with warnings.catch_warnings():
            # transformers 5.24 deprecates a name peft and trl still call at every step.
            warnings.filterwarnings(
                "ignore", message=".*is_gradient_checkpointing", category=FutureWarning
            )
            # full_modules with the tied embeddings and head trains two copies, on purpose: the
            # adapter stores both and loading restores both (peft warns about merging, never done).
            warnings.filterwarnings("ignore", message=".*tie_word_embeddings=True.*")
            result = train_adapter(
                model=model,
                tokenizer=tokenizer,
                examples=examples,
                data_hash=data_hash,
                recipe=lora,
                out_dir=out_dir,
                seed=seed,
                device=self.device,
                answers=answers,
            )
        return {
            "adapter": result.adapter,
            "hash": artefact_hash(result.adapter),
            "data_hash": data_hash,
            "train_seconds": result.seconds,
            "tokens_per_s": result.tokens_per_s,
        }

    def samples(self, artefact: Mapping[str, Any], split: str) -> list[dict[str, Any]]:
        """Graded samples of one artefact on one split, from the cache or by generating."""
        return self._graded(artefact, split)[1]

    def _graded(self, artefact: Mapping[str, Any], split: str) -> tuple[str, list[dict[str, Any]]]:
        """The adapter's content hash (hashed once per call) and its graded samples."""
        adapter = _adapter_of(artefact)
        items = self.items(split)
        try:
            content = artefact_hash(adapter)
        except FileNotFoundError:
            raise BackendError(f"adapter {adapter!r} is missing or empty") from None
        key = cache_key(
            artefact=content,
            base=str(self.base_path()),
            split=split,
            task=TASK_VERSION,
            items=items_hash(items),
            generation=asdict(self.generation),
        )
        cached = self.cache.get(key)
        if cached is not None:
            return content, cached["samples"]
        prompts = [i.prompt for i in items]
        if self.evaluator == "vllm":
            completions, seconds = generate_vllm(
                self.base_path(),
                prompts,
                adapter=adapter,
                max_tokens=self.generation.max_new_tokens,
                settings=self.vllm,
            )
        else:
            from searchlab_evaluation.generate import attach_adapter, generate

            model, tokenizer = self._load_base()
            model = attach_adapter(model, adapter)
            completions, seconds = generate(model, tokenizer, prompts, self.generation)
        samples = grade_samples(items, completions)
        self.cache.put(
            key,
            {
                "artefact": content,
                "split": split,
                "task": TASK_VERSION,
                "seconds": seconds,
                "samples_per_s": len(items) / seconds if seconds > 0 else None,
                "created": time.time(),
                "samples": samples,
            },
        )
        return content, samples

    def evaluate(self, artefact: Mapping[str, Any]) -> dict[str, tuple[float, int]]:
        return per_domain_accuracy(self.samples(artefact, "dev"), domains=self.domains)

    def submit_external(self, artefact: Mapping[str, Any], *, submission: int) -> dict[str, float]:
        self.leaderboard.check_budget()
        content, samples = self._graded(artefact, "external")
        result = self.leaderboard.score(samples, submission=submission, artefact=content)
        return result["public"]

    def recover_external(
        self, artefact: Mapping[str, Any], *, submission: int
    ) -> dict[str, float] | None:
        record = self.leaderboard.lookup(submission)
        return None if record is None else dict(record["public"])

    def private_external(self, artefact: Mapping[str, Any]) -> dict[str, float]:
        """The private-half accuracy per domain: the final result, hidden during a search."""
        samples = self.samples(artefact, "external")
        private = [s for s, m in zip(samples, self.leaderboard.public_mask, strict=True) if not m]
        return {d: a for d, (a, _) in per_domain_accuracy(private, domains=self.domains).items()}


def _model_is_local(name: str) -> bool:
    """A folder with config.json, or a hub id whose config is in the local cache."""
    if (Path(name) / "config.json").is_file():
        return True
    if Path(name).exists():
        return False
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except ValueError:  # not a valid repo id either
        return False


def _adapter_of(artefact: Mapping[str, Any]) -> str:
    adapter = artefact.get("adapter") if isinstance(artefact, Mapping) else None
    if not adapter:
        raise BackendError(f"artefact {artefact!r} names no adapter folder")
    return str(adapter)


def _puzzle_items(domains: Sequence[str], split: str, n: int, *, seed: int) -> list[Item]:
    return [
        Item(d, p.prompt, p.answer) for d in domains for p in make_split(d, split, n, seed=seed)
    ]


def _file_items(domains: Sequence[str], files: Mapping[str, str], split: str) -> list[Item]:
    items: list[Item] = []
    for d in domains:
        rows = read_rows(Path(files[d]), ("prompt", "answer"), what=f"{split}[{d}]")
        items += [Item(d, str(r["prompt"]), str(r["answer"])) for r in rows]
    return items
