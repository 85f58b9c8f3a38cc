"""Generation through vLLM in a separate process (see :mod:`searchlab_evaluation.vllm_runner`).

Without vLLM (a CPU machine, or an environment where it is not installed) every call raises a
:class:`BackendError` that says so and how to fix it: no evaluation is ever faked.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from searchlab.errors import BackendError

# The LoRA ranks vLLM's ``max_lora_rank`` accepts (docs/FACTS.md); an adapter's rank must also be at
# most the engine's ``max_lora_rank``.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
_RUNNER = Path(__file__).with_name("vllm_runner.py")


@dataclass(frozen=True)
class VllmSettings:
    """Where vLLM lives and how its engine is configured.

    Attributes:
        python: The Python interpreter of the environment that has vLLM.
        max_lora_rank: The engine's ``max_lora_rank`` (one of :data:`VLLM_LORA_RANKS`).
        max_model_len: The engine's context length (the challenge used 8192).
        gpu_memory_utilization: Share of GPU memory vLLM may take.
        timeout_s: Seconds one generation process may take.
    """

    python: str = sys.executable
    max_lora_rank: int = 32
    max_model_len: int = 8192
    gpu_memory_utilization: float = 0.85
    timeout_s: float = 3600.0


def check_lora_rank(rank: int, settings: VllmSettings) -> None:
    """Raises :class:`BackendError` for a LoRA rank this vLLM engine cannot serve."""
    if settings.max_lora_rank not in VLLM_LORA_RANKS:
        raise BackendError(
            f"vllm.max_lora_rank {settings.max_lora_rank} is not one vLLM accepts "
            f"{list(VLLM_LORA_RANKS)}"
        )
    if rank > settings.max_lora_rank:
        raise BackendError(
            f"LoRA rank {rank} cannot be served by vLLM with max_lora_rank {settings.max_lora_rank}"
        )


def vllm_available(python: str) -> tuple[bool, str]:
    """Whether ``import vllm`` works in ``python``, and the reason when it does not."""
    try:
        proc = subprocess.run(
            [python, "-c", "import vllm"], capture_output=True, text=True, timeout=300, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"{type(exc).__name__}: {exc}"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["import failed"])[-1]
        return False, last
    return True, ""


def generate_vllm(
    model: str | Path,
    prompts: Sequence[str],
    *,
    adapter: str | Path | None,
    max_tokens: int,
    settings: VllmSettings,
) -> tuple[list[str], float]:
    """Greedy completions from vLLM, and the seconds generation took (engine start excluded).

    Raises:
        BackendError: When vLLM is missing in ``settings.python``, or the process fails.
    """
    with tempfile.TemporaryDirectory(prefix="searchlab-vllm-") as tmp:
        job, out = Path(tmp) / "job.json", Path(tmp) / "out.json"
        job.write_text(
            json.dumps(
                {
                    "model": str(model),
                    "prompts": list(prompts),
                    "max_tokens": max_tokens,
                    "max_model_len": settings.max_model_len,
                    "max_lora_rank": settings.max_lora_rank,
                    "adapter": None if adapter is None else str(adapter),
                    "gpu_memory_utilization": settings.gpu_memory_utilization,
                }
            )
        )
        try:
            proc = subprocess.run(
                [settings.python, str(_RUNNER), str(job), str(out)],
                capture_output=True,
                text=True,
                timeout=settings.timeout_s,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BackendError(f"vLLM evaluator: {type(exc).__name__}: {exc}") from None
        if proc.returncode == 3:
            raise BackendError(
                f"vLLM evaluator: vLLM is not usable in {settings.python} "
                f"({proc.stderr.strip().splitlines()[-1]}); install it in its own environment "
                "(CUDA only) and set backend.options.vllm.python, or use evaluator: transformers"
            )
        if proc.returncode != 0:
            tail = " ".join(proc.stderr.strip().splitlines()[-3:])[:400]
            raise BackendError(f"vLLM evaluator failed (exit {proc.returncode}): {tail}")
        result = json.loads(out.read_text())
    return list(result["completions"]), float(result["seconds"])
