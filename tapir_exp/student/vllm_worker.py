"""Child process for VLLMGenerator: ``python -m tapir_exp.student.vllm_worker job.json out.json``."""

from __future__ import annotations

import json
import sys


def main(job_path: str, out_path: str) -> None:
    from vllm import LLM, SamplingParams

    with open(job_path) as fh:
        job = json.load(fh)
    llm = LLM(model=job["model"], tensor_parallel_size=job["tensor_parallel_size"], max_model_len=job["max_model_len"],
              gpu_memory_utilization=job["gpu_memory_utilization"], dtype=job["dtype"], seed=job["seed"])
    params = SamplingParams(max_tokens=job["max_new_tokens"], temperature=job["temperature"], top_p=job["top_p"],
                            seed=job["seed"])
    outputs = llm.chat(job["conversations"], params, use_tqdm=False)
    gens = [{"text": o.outputs[0].text, "completion_tokens": len(o.outputs[0].token_ids),
             "finish_reason": "length" if o.outputs[0].finish_reason == "length" else "stop",
             "prompt_tokens": len(o.prompt_token_ids or [])} for o in outputs]
    with open(out_path, "w") as fh:
        json.dump(gens, fh)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
