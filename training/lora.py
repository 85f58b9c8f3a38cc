"""LoRA post-training of one recipe with trl: supervised fine-tuning, or GRPO with grader rewards.

Both write the adapter folder (``adapter_model.safetensors``, ``adapter_config.json``) and a
``searchlab.json`` beside it with the recipe, the data hash, the training curve and throughput:
the artefact a study stores is that folder.

CPU notes (docs/FACTS.md): ``SFTConfig`` defaults to bf16, so CPU runs pass ``use_cpu=True,
bf16=False`` and no activation checkpointing (transformers 5.24's name for gradient
checkpointing); in transformers 5 ``warmup_ratio`` is gone (``warmup_steps`` < 1 is a ratio) and
``Trainer(tokenizer=)`` is ``processing_class=``.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from searchlab.errors import BackendError

if TYPE_CHECKING:
    from searchlab_training.data import Example

# Module names of a Llama-type decoder that LoRA may adapt, by the shorthand a recipe uses.
TARGET_MODULES: dict[str, list[str]] = {
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "attention+mlp": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qv": ["q_proj", "v_proj"],
}
# Modules trained in full beside the LoRA adapter (peft's ``modules_to_save``: a trainable copy
# saved with the adapter), by the shorthand a recipe uses. ``mlp`` is every decoder layer's MLP;
# ``mlp+embeddings`` adds the input embeddings and the output head, which is what lets training
# on one phrasing overwrite how the model reads the others (the real trap, docs/RESULTS.md).
FULL_MODULES: dict[str, list[str]] = {
    "none": [],
    "mlp": ["mlp"],
    "mlp+embeddings": ["mlp", "embed_tokens", "lm_head"],
}


@dataclass(frozen=True)
class LoraRecipe:
    """The training half of a recipe.

    Attributes:
        method: ``sft`` or ``grpo``.
        learning_rate: Peak learning rate (linear decay, no warm-up).
        epochs: Passes over the examples (used when ``steps`` is None).
        steps: Optimiser steps; overrides ``epochs``.
        batch_size: Examples per step.
        rank: LoRA rank.
        alpha: LoRA alpha (scaling alpha / rank).
        dropout: LoRA dropout.
        target_modules: A key of :data:`TARGET_MODULES` or explicit module names.
        full_modules: A key of :data:`FULL_MODULES` or explicit module names, trained in full
            (not low-rank) beside the adapter and saved with it.
        num_generations: GRPO group size.
        max_length: SFT sequence length (tokens; longer examples are truncated).
        max_completion_length: GRPO completion length (tokens).
    """

    method: str = "sft"
    learning_rate: float = 1e-3
    epochs: float = 1.0
    steps: int | None = None
    batch_size: int = 16
    rank: int = 8
    alpha: float | None = None
    dropout: float = 0.0
    target_modules: str | Sequence[str] = "attention"
    full_modules: str | Sequence[str] = "none"
    num_generations: int = 4
    max_length: int = 128
    max_completion_length: int = 16

    def modules(self) -> list[str]:
        """The LoRA target module names."""
        return _shorthand("target_modules", self.target_modules, TARGET_MODULES)

    def full(self) -> list[str]:
        """The names of the modules trained in full (none by default)."""
        return _shorthand("full_modules", self.full_modules, FULL_MODULES)


def _shorthand(field: str, value: str | Sequence[str], table: dict[str, list[str]]) -> list[str]:
    """Module names from a shorthand of ``table`` or an explicit list."""
    if not isinstance(value, str):
        return list(value)
    if value not in table:
        raise BackendError(
            f"{field} {value!r}: expected one of {sorted(table)} or a list of module names"
        )
    return table[value]


@dataclass
class TrainResult:
    """What one training run produced."""

    adapter: str
    data_hash: str
    seconds: float
    tokens: int
    tokens_per_s: float
    curve: list[dict[str, float]] = field(default_factory=list)


def _device_flags(device: str) -> dict[str, Any]:
    # On CPU: fp32, no checkpointing (docs/FACTS.md; transformers 5.24 renamed
    # gradient_checkpointing to activation_checkpointing). On CUDA the tiny model also trains in
    # fp32; a real model's dtype is set when it is loaded.
    return {"use_cpu": device == "cpu", "bf16": False, "activation_checkpointing": False}


def _peft_config(recipe: LoraRecipe) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=recipe.rank,
        lora_alpha=recipe.alpha if recipe.alpha is not None else 2 * recipe.rank,
        lora_dropout=recipe.dropout,
        target_modules=recipe.modules(),
        modules_to_save=recipe.full() or None,
        task_type="CAUSAL_LM",
    )


def _common_args(
    recipe: LoraRecipe, n_examples: int, *, seed: int, device: str, output_dir: str
) -> dict[str, Any]:
    steps = recipe.steps
    if steps is None:
        steps = max(1, math.ceil(recipe.epochs * n_examples / recipe.batch_size))
    return {
        "output_dir": output_dir,  # nothing is saved there (save_strategy "no")
        "per_device_train_batch_size": recipe.batch_size,
        "learning_rate": recipe.learning_rate,
        "max_steps": steps,
        "lr_scheduler_type": "linear",
        "warmup_steps": 0,
        "logging_steps": max(1, steps // 20),
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "seed": seed,
        "data_seed": seed,
        "dataloader_num_workers": 0,
        "include_num_input_tokens_seen": True,
        **_device_flags(device),
    }


def train_adapter(
    *,
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    data_hash: str,
    recipe: LoraRecipe,
    out_dir: Path,
    seed: int,
    device: str,
    answers: Sequence[str] | None = None,
) -> TrainResult:
    """Trains one LoRA adapter on ``model`` and saves it into ``out_dir``.

    Args:
        model: The loaded base causal LM (not modified: peft wraps it).
        tokenizer: Its tokenizer (left padding).
        examples: The training examples of the recipe.
        data_hash: Their content hash, recorded with the adapter.
        recipe: What to train.
        out_dir: The adapter folder to write.
        seed: The training seed.
        device: ``cpu`` or ``cuda``.
        answers: For GRPO, the reference answer of each example (rewards come from the grader).

    Raises:
        BackendError: On a recipe trl or peft rejects, or a run that fails (out of memory
            included), naming the cause.
    """
    import transformers

    transformers.set_seed(seed)
    started = time.perf_counter()
    # The trainer's own output folder stays empty (nothing is checkpointed): thrown away after.
    scratch = tempfile.TemporaryDirectory(prefix="searchlab-trainer-")
    try:
        trainer = _trainer(model, tokenizer, examples, answers, recipe, seed, device, scratch.name)
        # trl prints every log row to stdout when progress bars are off; the curve is kept below.
        trainer.remove_callback(transformers.PrinterCallback)
        trainer.train()
    except BackendError:
        raise
    except Exception as exc:
        raise BackendError(f"training failed: {_describe(exc)}") from None
    finally:
        scratch.cleanup()
    seconds = time.perf_counter() - started
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer.model.save_pretrained(out_dir)
    tokens = int(trainer.state.num_input_tokens_seen or 0)
    curve = [
        {k: float(v) for k, v in row.items() if k in ("step", "loss", "reward", "learning_rate")}
        for row in trainer.state.log_history
        if "loss" in row or "reward" in row
    ]
    result = TrainResult(
        adapter=str(out_dir),
        data_hash=data_hash,
        seconds=round(seconds, 3),
        tokens=tokens,
        tokens_per_s=round(tokens / seconds, 1) if seconds > 0 else 0.0,
        curve=curve,
    )
    (out_dir / "searchlab.json").write_text(
        json.dumps({"recipe": asdict(recipe), **asdict(result)}, indent=2, default=str)
    )
    return result


def _trainer(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    answers: Sequence[str] | None,
    recipe: LoraRecipe,
    seed: int,
    device: str,
    output_dir: str,
) -> Any:
    """trl's trainer for the recipe's method (``sft`` or ``grpo``), not yet trained."""
    if recipe.method == "grpo":
        return _grpo_trainer(
            model,
            tokenizer,
            examples,
            answers,
            recipe,
            seed=seed,
            device=device,
            output_dir=output_dir,
        )
    if recipe.method != "sft":
        raise BackendError(f"method {recipe.method!r}: expected 'sft' or 'grpo'")
    import datasets
    from trl import SFTConfig, SFTTrainer

    rows = [{"prompt": e.prompt, "completion": e.completion} for e in examples]
    args = SFTConfig(
        **_common_args(recipe, len(rows), seed=seed, device=device, output_dir=output_dir),
        max_length=recipe.max_length,
        completion_only_loss=True,
    )
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=_peft_config(recipe),
    )


def _grpo_trainer(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    answers: Sequence[str] | None,
    recipe: LoraRecipe,
    *,
    seed: int,
    device: str,
    output_dir: str,
) -> Any:
    import datasets
    from trl import GRPOConfig, GRPOTrainer

    from searchlab_evaluation.grader import grade

    if answers is None or len(answers) != len(examples):
        raise BackendError("GRPO needs a reference answer per example")

    def correctness(completions: list[str], answer: list[str], **_: Any) -> list[float]:
        """Reward 1 for a completion the challenge grader accepts, else 0."""
        return [1.0 if grade(c, a) else 0.0 for c, a in zip(completions, answer, strict=True)]

    rows = [{"prompt": e.prompt, "answer": a} for e, a in zip(examples, answers, strict=True)]
    # GRPO's batch counts completions: a step sees batch_size / num_generations prompts.
    batch = max(
        recipe.num_generations, recipe.batch_size - recipe.batch_size % recipe.num_generations
    )
    args = GRPOConfig(
        **{
            **_common_args(recipe, len(rows), seed=seed, device=device, output_dir=output_dir),
            "per_device_train_batch_size": batch,
        },
        use_vllm=False,
        num_generations=recipe.num_generations,
        max_completion_length=recipe.max_completion_length,
    )
    return GRPOTrainer(
        model=model,
        reward_funcs=[correctness],
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=_peft_config(recipe),
    )


def _describe(exc: BaseException) -> str:
    """One line naming an exception; out-of-memory errors say so first."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    oom = isinstance(exc, MemoryError) or "out of memory" in text.lower()
    oom = oom or "can't allocate memory" in text.lower()
    prefix = "out of memory: " if oom else ""
    return f"{prefix}{type(exc).__name__}: {text[:400]}"
