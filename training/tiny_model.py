"""A tiny reasoning base model, built locally: no model hub is reachable from these machines.

The build has three steps, all deterministic for one :class:`TinyBaseSpec`:

1. a byte-level BPE tokenizer trained with ``tokenizers`` on the puzzles' training text;
2. a Llama-type configuration (``LlamaConfig``), randomly initialised with the spec's seed;
3. a short full fine-tune on the generic puzzle phrasings (plus a small share of dev-template
   phrasings), so that LoRA has something to adapt: LoRA on a randomly initialised base learns
   almost nothing (docs/FACTS.md).

The result is saved with ``save_pretrained`` into ``<cache>/tiny-base-<key>`` where the key hashes
the spec and the puzzles' task version, so every study and test that asks for the same spec reuses
one build. A build writes into a temporary folder and renames it into place, under a file lock, so
two processes asking at once build it once and nobody sees half a model.

Why a Llama-type configuration: ``AutoTokenizer`` on a Qwen2-type configuration silently rebuilds
the pre-tokenizer of a custom tokenizer (digits split, wrong ids); a Llama-type one keeps it
(docs/FACTS.md).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from searchlab_evaluation.puzzles import FAMILIES, TASK_VERSION, Puzzle, make_all

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

PAD, BOS, EOS = "<pad>", "<s>", "</s>"


@dataclass(frozen=True)
class TinyBaseSpec:
    """What a tiny base is built from; every field enters the cache key.

    Attributes:
        seed: Seeds the data, the initial weights and the training order.
        vocab_size: BPE vocabulary size, special tokens included.
        hidden_size: Model width.
        layers: Decoder layers.
        heads: Attention heads.
        steps: Full fine-tuning steps of the base.
        batch_size: Sequences per step.
        learning_rate: AdamW learning rate (linear decay to zero).
        examples_per_family: Generic training puzzles per family.
        template_share: Share of each family's base data phrased like the dev split, so dev starts
            near external before any LoRA training.
    """

    seed: int = 0
    vocab_size: int = 512
    hidden_size: int = 128
    layers: int = 2
    heads: int = 4
    steps: int = 3000
    batch_size: int = 32
    learning_rate: float = 3e-3
    examples_per_family: int = 3000
    template_share: float = 0.1

    def key(self) -> str:
        """A short hash of the spec and the puzzles' task version."""
        blob = json.dumps({**dataclasses.asdict(self), "task": TASK_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def format_example(puzzle: Puzzle) -> tuple[str, str]:
    """The prompt and completion of one puzzle.

    The space before the answer belongs to the completion: a prompt ending in a space breaks trl's
    prompt/completion prefix check (docs/FACTS.md).
    """
    return puzzle.prompt, " " + puzzle.answer


def base_corpus(spec: TinyBaseSpec) -> list[Puzzle]:
    """The base's training puzzles: generic phrasings plus a ``template_share`` of dev phrasing."""
    n_template = round(spec.examples_per_family * spec.template_share)
    generic = make_all("train_generic", spec.examples_per_family - n_template, seed=spec.seed)
    template = make_all("train_template", n_template, seed=spec.seed)
    return [p for family in FAMILIES for p in (*generic[family], *template[family])]


def _train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerBase:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    # Every encoded text starts with BOS, in base training, trl's SFT and generation alike.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    # padding_side goes to the constructor: set later, it is not saved (docs/FACTS.md). Left padding
    # is what batched generation needs.
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, padding_side="left"
    )


def _new_model(spec: TinyBaseSpec, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=2 * spec.hidden_size,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(spec.seed)
    return LlamaForCausalLM(config)


def _full_finetune(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    corpus: list[Puzzle],
    spec: TinyBaseSpec,
) -> list[float]:
    """Plain causal-LM training on whole sequences; returns the loss every 50 steps.

    A hand loop rather than ``Trainer``: the base is a fixture of the benchmark, not a recipe
    being searched, and the loop keeps its build fast and bit-for-bit reproducible.
    """
    import torch

    texts = [p + c + tokenizer.eos_token for p, c in map(format_example, corpus)]
    generator = torch.Generator().manual_seed(spec.seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: max(0.0, 1.0 - step / spec.steps)
    )
    model.train()
    curve: list[float] = []
    # Right padding for training; the saved tokenizer keeps left padding for generation.
    tokenizer.padding_side = "right"
    try:
        for step in range(spec.steps):
            idx = torch.randint(len(texts), (spec.batch_size,), generator=generator).tolist()
            batch = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True)
            labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
            loss = model(**batch, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            schedule.step()
            optimiser.zero_grad(set_to_none=True)
            if step % 50 == 0 or step == spec.steps - 1:
                curve.append(round(loss.item(), 4))
    finally:
        tokenizer.padding_side = "left"
    model.eval()
    return curve


def build_tiny_base(cache_dir: Path | str, spec: TinyBaseSpec | None = None) -> Path:
    """Returns the folder of the tiny base for ``spec``, building it on first use.

    Args:
        cache_dir: The cache folder (created if missing).
        spec: The build; the default spec when None.

    Returns:
        A folder loadable with ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer``,
        with ``build.json`` (spec, key, seconds, loss curve) beside the weights.
    """
    spec = spec or TinyBaseSpec()
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"tiny-base-{spec.key()}"
    if (target / "build.json").exists():
        return target
    with open(cache / f".tiny-base-{spec.key()}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if (target / "build.json").exists():  # built by another process while we waited
            return target
        import torch

        started = time.perf_counter()
        corpus = base_corpus(spec)
        tokenizer = _train_tokenizer([p.prompt + " " + p.answer for p in corpus], spec.vocab_size)
        with torch.random.fork_rng():
            model = _new_model(spec, tokenizer)
            curve = _full_finetune(model, tokenizer, corpus, spec)
        staging = cache / f".tiny-base-{spec.key()}.{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Writing model shards" is noise in a study's output
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        record: dict[str, Any] = {
            "spec": dataclasses.asdict(spec),
            "key": spec.key(),
            "task_version": TASK_VERSION,
            "parameters": sum(p.numel() for p in model.parameters()),
            "seconds": round(time.perf_counter() - started, 2),
            "loss_every_50_steps": curve,
        }
        (staging / "build.json").write_text(json.dumps(record, indent=2))
        os.replace(staging, target)
    return target
