"""The anchors of benchmarks/decode.py, each run in an environment of its own (they pin other
versions of transformers than each other): prints one JSON line,
{context: {ttft_ms, ms_per_token, tokens_per_s, runs}} or {"error": ...}.

    PY _decode_anchors.py optimum|onnxruntime-genai|openvino-genai|"openvino-genai PA" MODEL_DIR
        CONTEXTS NEW REPEAT

Each builds what it needs from MODEL_DIR (decode_model.py's folder) into MODEL_DIR/<anchor>
once: onnxruntime-genai's builder reads the checkpoint MODEL_DIR/hf, optimum-intel exports the
OpenVINO model from it; optimum runs the ONNX export MODEL_DIR/onnx. Greedy, batch 1, exactly
NEW tokens (no end id), the same random prompts as decode.py (seed 0).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def prompts(model_dir: Path, contexts: list[int]) -> dict[int, np.ndarray]:
    vocab = json.loads((model_dir / "MODEL.json").read_text())["config"]["vocab_size"]
    rng = np.random.default_rng(0)
    return {c: rng.integers(4, vocab, (1, c), dtype=np.int64) for c in contexts}


Run = Callable[[np.ndarray, int], tuple[list[float], list[int]]]


def measure(run: Run, ids: dict[int, np.ndarray], new: int, repeat: int) -> dict[str, dict]:
    """run(ids, new) -> (the time each token arrived from the start of the call, the tokens)."""
    out = {}
    for c, x in ids.items():
        run(x, new)  # warm-up
        first, step = [], []
        for _ in range(repeat):
            stamps, tokens = run(x, new)
            first.append(stamps[0])
            step.append((stamps[-1] - stamps[0]) / (len(stamps) - 1))
        s = statistics.median(step)
        out[str(c)] = {
            "ttft_ms": statistics.median(first) * 1e3,
            "ms_per_token": s * 1e3,
            "tokens_per_s": 1 / s,
            "runs": repeat,
            "tokens": [int(t) for t in tokens],
        }
    return out


def optimum(model_dir: Path) -> Run:
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import LogitsProcessor, LogitsProcessorList

    model = ORTModelForCausalLM.from_pretrained(model_dir / "onnx", use_cache=True)

    class Clock(LogitsProcessor):  # called once per token, as the logits come
        def __init__(self) -> None:
            self.stamps: list[float] = []

        def __call__(self, input_ids, scores):  # type: ignore[no-untyped-def]
            self.stamps.append(time.perf_counter())
            return scores

    def run(ids: np.ndarray, new: int) -> tuple[list[float], list[int]]:
        clock = Clock()
        x = torch.from_numpy(ids)
        t0 = time.perf_counter()
        out = model.generate(
            input_ids=x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            logits_processor=LogitsProcessorList([clock]),
        )
        return [t - t0 for t in clock.stamps], out[0, ids.shape[1] :].tolist()

    return run


def onnxruntime_genai(model_dir: Path) -> Run:
    import onnxruntime_genai as og

    out = model_dir / "onnxruntime-genai"
    if not (out / "genai_config.json").exists():
        subprocess.run(
            [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(model_dir / "hf"),
             "-o", str(out), "-p", "fp32", "-e", "cpu", "-c", str(model_dir / "genai-cache")],
            check=True,
        )  # fmt: skip
    model = og.Model(str(out))

    def run(ids: np.ndarray, new: int) -> tuple[list[float], list[int]]:
        params = og.GeneratorParams(model)
        total = ids.shape[1] + new
        params.set_search_options(max_length=total, min_length=total, do_sample=False)
        t0 = time.perf_counter()
        generator = og.Generator(model, params)
        generator.append_tokens(ids)
        stamps = []
        while not generator.is_done():
            generator.generate_next_token()
            stamps.append(time.perf_counter() - t0)
        return stamps, list(generator.get_sequence(0))[ids.shape[1] :]

    return run


def openvino_genai(model_dir: Path, backend: str = "SDPA") -> Run:
    """backend "SDPA": its stateful model, the cache inside the infer request (as infer's);
    "PA": its default paged attention (continuous batching), prefix caching off (repeated
    prompts would skip their prefill)."""
    import openvino as ov
    import openvino_genai

    out = model_dir / "openvino-genai"
    if not (out / "openvino_model.xml").exists():
        subprocess.run(
            [str(Path(sys.executable).with_name("optimum-cli")), "export", "openvino", "--model",
             str(model_dir / "hf"), "--task", "text-generation-with-past", "--weight-format",
             "fp32", str(out)],
            check=True,
        )  # fmt: skip
    # fp32 as infer runs it: no bf16 inference, no u8 KV cache
    config = dict(INFERENCE_PRECISION_HINT="f32", KV_CACHE_PRECISION="f32")
    if backend == "PA":
        scheduler = openvino_genai.SchedulerConfig()
        scheduler.enable_prefix_caching = False
        config["scheduler_config"] = scheduler  # type: ignore[assignment]
    pipe = openvino_genai.LLMPipeline(str(out), "CPU", ATTENTION_BACKEND=backend, **config)

    class Clock(openvino_genai.StreamerBase):  # told each token id as it is picked
        def __init__(self, t0: float) -> None:
            super().__init__()
            self.t0 = t0
            self.stamps: list[float] = []

        def write(self, token: object) -> object:
            self.stamps.append(time.perf_counter() - self.t0)
            return openvino_genai.StreamingStatus.RUNNING

        def end(self) -> None:
            pass

    def run(ids: np.ndarray, new: int) -> tuple[list[float], list[int]]:
        config = openvino_genai.GenerationConfig()
        config.max_new_tokens = new
        config.min_new_tokens = new
        config.ignore_eos = True
        tokens = openvino_genai.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids)))
        clock = Clock(time.perf_counter())
        result = pipe.generate(tokens, config, clock)
        return clock.stamps, list(result.tokens[0])

    return run


def main() -> None:
    kind, model_dir, contexts, new, repeat = sys.argv[1:6]
    makers = {
        "optimum": optimum,
        "onnxruntime-genai": onnxruntime_genai,
        "openvino-genai": openvino_genai,
        "openvino-genai PA": lambda d: openvino_genai(d, "PA"),
    }
    try:
        run = makers[kind](Path(model_dir))
        ids = prompts(Path(model_dir), [int(c) for c in contexts.split(",")])
        result: dict = measure(run, ids, int(new), int(repeat))
    except Exception as e:  # reported, not raised: the benchmark goes on without this anchor
        result = {"error": f"{type(e).__name__}: {e}"[:500]}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
