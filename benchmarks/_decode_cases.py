"""The cases of benchmarks/decode.py, one per process (so that no other runtime's threads
share the cores while one is timed; the anchors also pin other versions of transformers than
each other, in environments of their own): prints one JSON line,
{context: {ttft_ms, ms_per_token, tokens_per_s, runs, tokens, cache}} or {"error": ...}.

    PY _decode_cases.py CASE MODEL_DIR CONTEXTS NEW REPEAT

CASE: one of CASES below. infer's cases and the raw loop run the ONNX export MODEL_DIR/onnx (in
infer's environment); the anchors build what they need from MODEL_DIR (decode_model.py's
folder) once: onnxruntime-genai's builder reads the checkpoint MODEL_DIR/hf, optimum-intel
exports the OpenVINO model from it. Greedy, batch 1, exactly NEW tokens (no end id), the same
random prompts (seed 0).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np


def prompts(model_dir: Path, contexts: list[int]) -> dict[int, np.ndarray]:
    vocab = json.loads((model_dir / "MODEL.json").read_text())["config"]["vocab_size"]
    rng = np.random.default_rng(0)
    return {c: rng.integers(4, vocab, (1, c), dtype=np.int64) for c in contexts}


Run = Callable[[np.ndarray, int], tuple[list[float], list[int]]]


def clocked(tokens: Iterator[int], t0: float) -> tuple[list[float], list[int]]:
    """The time each token of a stream arrived, from t0, and the tokens."""
    stamps, out = [], []
    for t in tokens:
        stamps.append(time.perf_counter() - t0)
        out.append(int(t))
    return stamps, out


def raw_loop(model_dir: Path) -> tuple[Run, str]:
    """Greedy decoding by hand on ONNX Runtime: the past comes back as numpy and goes in again."""
    import onnxruntime as ort

    sess = ort.InferenceSession(
        str(model_dir / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    inputs = {i.name: i for i in sess.get_inputs()}
    pasts = [n for n in inputs if n.startswith("past_key_values.")]
    outputs = ["logits", *(n.replace("past_key_values.", "present.") for n in pasts)]

    def stream(ids: np.ndarray, new: int) -> Iterator[int]:
        batch, length = ids.shape
        mask = np.ones((batch, length), np.int64)
        feeds: dict[str, np.ndarray] = {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": np.arange(length, dtype=np.int64)[None].repeat(batch, 0),
        }
        for n in pasts:
            shape = [batch if isinstance(d, str) and "batch" in d else d for d in inputs[n].shape]
            shape[2] = 0
            feeds[n] = np.zeros(shape, np.float32)
        for i in range(new):
            logits, *presents = sess.run(outputs, feeds)
            token = logits[:, -1].argmax(-1)
            yield int(token[0])
            if i == new - 1:
                return
            mask = np.concatenate([mask, np.ones((batch, 1), np.int64)], axis=1)
            feeds = {
                "input_ids": token[:, None].astype(np.int64),
                "attention_mask": mask,
                "position_ids": np.full((batch, 1), mask.shape[1] - 1, np.int64),
                **dict(zip(pasts, presents)),
            }

    def run(ids: np.ndarray, new: int) -> tuple[list[float], list[int]]:
        return clocked(stream(ids, new), time.perf_counter())

    return run, "numpy, fed back every step"


def infer_case(
    path: Path, backend: str | None, cache: str = "auto", dims: dict[str, int] | None = None
) -> tuple[Run, str]:
    """infer's decoder on one backend (None: the default's pick)."""
    import infer

    engine = infer.Engine.load(path, backend=backend)
    decoder = engine.decoder(cache=cache, dims=dims)

    def run(ids: np.ndarray, new: int) -> tuple[list[float], list[int]]:
        return clocked(decoder.stream(ids[0].tolist(), new), time.perf_counter())

    return run, f"{engine.backend}: {decoder.cache}"


def genai_graph(model_dir: Path) -> tuple[Run, str]:
    """infer's decoder on ONNX Runtime over onnxruntime-genai's own model of the checkpoint."""
    path = model_dir / "onnxruntime-genai" / "model.onnx"
    config = json.loads(path.with_name("genai_config.json").read_text())["model"]["decoder"]
    return infer_case(path, "onnxruntime", dims={"kv_cache_dim": config["head_size"]})


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


def optimum(model_dir: Path) -> tuple[Run, str]:
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

    return run, "its own: optimum's ORTModelForCausalLM (numpy past on the CPU)"


def onnxruntime_genai(model_dir: Path) -> tuple[Run, str]:
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

    return run, "its own: onnxruntime-genai's past/present buffer"


def openvino_genai(model_dir: Path, backend: str = "SDPA") -> tuple[Run, str]:
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

    return run, f"its own: openvino-genai ({backend})"


def _cases() -> dict[str, Callable[[Path], tuple[Run, str]]]:
    onnx = "onnx/model.onnx"
    ir = "openvino-stateless/openvino_model.xml"
    return {
        "raw onnxruntime loop": raw_loop,
        "infer onnxruntime": lambda d: infer_case(d / onnx, "onnxruntime"),
        "infer openvino stateful": lambda d: infer_case(d / onnx, "openvino"),
        "infer openvino host loop": lambda d: infer_case(d / onnx, "openvino", "host"),
        "infer default": lambda d: infer_case(d / onnx, None),
        "infer openvino stateful, IR": lambda d: infer_case(d / ir, "openvino"),
        "infer onnxruntime, genai graph": genai_graph,
        "optimum": optimum,
        "onnxruntime-genai": onnxruntime_genai,
        "openvino-genai": openvino_genai,
        "openvino-genai PA": lambda d: openvino_genai(d, "PA"),
    }


CASES = tuple(_cases())
INFER_ENV = CASES[:7]
"""The cases that run in infer's own environment; the others are the anchors'."""


def main() -> None:
    kind, model_dir, contexts, new, repeat = sys.argv[1:6]
    try:
        run, cache = _cases()[kind](Path(model_dir))
        ids = prompts(Path(model_dir), [int(c) for c in contexts.split(",")])
        result: dict = measure(run, ids, int(new), int(repeat))
        for row in result.values():
            row["cache"] = cache
    except Exception as e:  # reported, not raised: the benchmark goes on without this case
        result = {"error": f"{type(e).__name__}: {e}"[:500]}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
