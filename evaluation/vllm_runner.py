"""Greedy generation with vLLM for one model and at most one LoRA adapter, as a standalone script.

Run in its own process and, where needed, its own Python environment: the vLLM wheel pins
torch and a transformers range that cannot share an environment with transformers 5.23, and GPU
memory is not reliably freed when an engine is deleted, so one engine lives per process
(docs/FACTS.md). It imports vLLM and the standard library only, so it runs in an environment where
searchlab is not installed::

    python vllm_runner.py JOB.json OUT.json

``JOB.json``: ``{"model": path, "prompts": [...], "max_tokens": int, "max_model_len": int,
"max_lora_rank": int, "adapter": path or null, "gpu_memory_utilization": float}``.
``OUT.json``: ``{"completions": [...], "seconds": float, "vllm": version}``.
Exit status 3 means vLLM cannot be imported here; the message says why.
"""

from __future__ import annotations

import json
import sys
import time


def main(job_path: str, out_path: str) -> int:
    try:
        import vllm
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest
    except Exception as exc:  # ImportError, or a CUDA-less machine failing at import
        print(f"vLLM cannot be imported: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 3
    with open(job_path, encoding="utf-8") as fh:
        job = json.load(fh)
    adapter = job.get("adapter")
    llm = LLM(
        model=job["model"],
        enable_lora=adapter is not None,
        max_lora_rank=int(job.get("max_lora_rank", 32)),
        max_model_len=int(job.get("max_model_len", 8192)),
        gpu_memory_utilization=float(job.get("gpu_memory_utilization", 0.85)),
        seed=0,
    )
    # The challenge's grader settings: temperature 0, top_p 1.
    params = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=int(job["max_tokens"]))
    lora = LoRARequest("candidate", 1, adapter) if adapter is not None else None
    started = time.perf_counter()
    outputs = llm.generate(job["prompts"], params, lora_request=lora)
    seconds = time.perf_counter() - started
    result = {
        "completions": [o.outputs[0].text for o in outputs],
        "seconds": seconds,
        "vllm": vllm.__version__,
    }
    with open(out_path, "w", encoding="utf-8") as fh:
        json.dump(result, fh)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print("usage: python vllm_runner.py JOB.json OUT.json", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2]))
