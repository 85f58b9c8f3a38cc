"""Batched greedy generation with transformers (CPU or GPU), and adapter loading.

Greedy decoding with left padding: a decoder-only model continues from the last position, so
prompts of a batch are padded on the left. Temperature 0 in the challenge's grader is greedy
decoding here.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from searchlab.errors import BackendError


@dataclass(frozen=True)
class GenerationSettings:
    """How completions are produced; every field enters the evaluation cache key.

    Attributes:
        max_new_tokens: Tokens generated per prompt at most.
        batch_size: Prompts per forward batch.
        engine: ``transformers`` or ``vllm``.
    """

    max_new_tokens: int = 16
    batch_size: int = 64
    engine: str = "transformers"


def resolve_device(device: str) -> str:
    """``auto`` becomes ``cuda`` when a GPU is visible, else ``cpu``."""
    if device not in ("auto", "cpu", "cuda"):
        raise BackendError(f"device {device!r}: expected auto, cpu or cuda")
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_base(path: str | Path, *, device: str, dtype: str = "auto") -> tuple[Any, Any]:
    """Loads a causal LM and its tokenizer from a local folder or the local Hugging Face cache.

    ``path`` is a folder, or a hub id that is already in the local cache (``HF_HOME``): nothing
    is ever downloaded.

    Raises:
        BackendError: Naming the model when it is neither, or cannot be loaded.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per load would flood a study's output
    folder = Path(path)
    if folder.exists() and not (folder / "config.json").is_file():
        raise BackendError(f"model {str(path)!r}: the folder has no config.json")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left", local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    except OSError:
        raise BackendError(
            f"model {str(path)!r}: no such local model folder, nor in the local Hugging Face "
            "cache; models are never downloaded at run time"
        ) from None
    except Exception as exc:
        raise BackendError(
            f"model {str(path)!r} could not be loaded: {type(exc).__name__}: {exc}"
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer


def attach_adapter(model: Any, adapter: str | Path) -> Any:
    """The base with a LoRA adapter folder applied (peft), for evaluation.

    Raises:
        BackendError: When the folder is missing or its weights are unreadable (a corrupt adapter).
    """
    from peft import PeftModel

    folder = Path(adapter)
    if not (folder / "adapter_config.json").is_file():
        raise BackendError(f"adapter {str(adapter)!r}: no adapter_config.json")
    try:
        with warnings.catch_warnings():
            # An adapter with full_modules holds its own copies of the tied embeddings and head,
            # restored as trained; peft's warning is about merging, which is never done here.
            warnings.filterwarnings("ignore", message=".*tie_word_embeddings=True.*")
            return PeftModel.from_pretrained(model, folder, is_trainable=False).eval()
    except Exception as exc:
        text = " ".join(str(exc).split())[:300]
        raise BackendError(
            f"adapter {str(adapter)!r} is corrupt or does not fit the base: "
            f"{type(exc).__name__}: {text}"
        ) from None


def generate(
    model: Any, tokenizer: Any, prompts: Sequence[str], settings: GenerationSettings
) -> tuple[list[str], float]:
    """Greedy completions of ``prompts``, and the seconds it took.

    Args:
        model: A causal LM (base or peft-wrapped) in eval mode.
        tokenizer: Its tokenizer, padding on the left.
        prompts: The prompts, in order.
        settings: Token limit and batch size.

    Returns:
        The decoded completions (prompt tokens removed, special tokens skipped) in prompt order,
        and the wall-clock seconds.
    """
    import torch

    started = time.perf_counter()
    device = next(model.parameters()).device
    out: list[str] = []
    for start in range(0, len(prompts), settings.batch_size):
        chunk = list(prompts[start : start + settings.batch_size])
        batch = tokenizer(chunk, return_tensors="pt", padding=True).to(device)
        with torch.inference_mode():
            tokens = model.generate(
                **batch,
                max_new_tokens=settings.max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        new = tokens[:, batch["input_ids"].shape[1] :]
        out += tokenizer.batch_decode(new, skip_special_tokens=True)
    return out, time.perf_counter() - started
