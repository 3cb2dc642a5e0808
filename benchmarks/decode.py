"""Decoding: time to first token and tokens per second, infer against the runtimes' own loops.

On one exported decoder (benchmarks/decode_model.py: Llama-shaped, 6 layers, GQA, random
weights), greedy decoding of NEW tokens after a random prompt of each context (128 and 1024
tokens), batch 1, timed side by side in one run:

- infer on ONNX Runtime (`engine.decoder()`: the past in bound OrtValues),
- infer on OpenVINO, stateful (the past in the infer request's state, KV cache fp32),
- infer on OpenVINO with the host loop (`decoder(cache="host")`: the past copied in and out),
- infer on OpenVINO, stateful, on the OpenVINO IR optimum-intel exports from the same checkpoint
  without its own stateful step (`optimum-cli export openvino --task text-generation-with-past
  --weight-format fp32 --disable-stateful MODEL_DIR/hf MODEL_DIR/openvino-stateless`), where that
  folder exists: the graph openvino-genai runs (OpenVINO's ONNX import of the optimum export
  fuses less),
- infer on ONNX Runtime on onnxruntime-genai's own model of the checkpoint (its builder's graph,
  with `dims={"kv_cache_dim": head size}`), where MODEL_DIR/onnxruntime-genai exists (the
  onnxruntime-genai anchor builds it),
- infer's default (`Engine.load(model)`: the backend its race picks on the decode step),
- a raw ONNX Runtime loop written out by hand (numpy past fed back every step),
- the anchors, each in its own environment where it installed (see benchmarks/_decode_anchors.py):
  optimum's `ORTModelForCausalLM.generate`, onnxruntime-genai (its builder's model from the same
  checkpoint: its own graph, with fused GroupQueryAttention and rotary kernels), openvino-genai
  (optimum-intel's OpenVINO export of the same checkpoint) with its stateful SDPA backend (as
  infer's) and with its default paged attention (prefix caching off).

Every case runs in each of ROUNDS rounds (REPEAT runs a round; the anchors in a process of their
own, started each round), so that slow spells of the shared, noisy machines here hit all cases
alike: a figure is the median over all runs, a ratio the median over rounds of the two cases'
figures in that round (compare the ratios of one run, not figures across runs).
Time to first token is the prompt's prefill plus the first token; ms/token the mean of the
later steps of a run; tokens/s its inverse. Every case is checked to give the raw loop's tokens.

    python benchmarks/decode.py MODEL_DIR [--contexts 128,1024] [--new 32] [--rounds 3] [--repeat 2]
        [--optimum-python PY] [--ortgenai-python PY] [--ovgenai-python PY]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import infer  # noqa: E402
from benchmarks import _results  # noqa: E402

Stream = Callable[[np.ndarray, int], Iterator[int]]


def raw_loop(path: Path) -> Stream:
    """Greedy decoding by hand on ONNX Runtime: the past comes back as numpy and goes in again."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
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

    return stream


def infer_stream(
    engine: infer.Engine, cache: str = "auto", dims: dict[str, int] | None = None
) -> tuple[Stream, str]:
    decoder = engine.decoder(cache=cache, dims=dims)

    def stream(ids: np.ndarray, new: int) -> Iterator[int]:
        return decoder.stream(ids[0].tolist(), new)

    return stream, f"{engine.backend}: {decoder.cache}"


def timed(stream: Stream, ids: np.ndarray, new: int) -> tuple[float, float, list[int]]:
    """(seconds to the first token, seconds per later token, the tokens)."""
    t0 = time.perf_counter()
    it = stream(ids, new)
    tokens = [next(it)]
    t1 = time.perf_counter()
    tokens += list(it)
    t2 = time.perf_counter()
    return t1 - t0, (t2 - t1) / (new - 1), tokens


def figures(first: list[float], step: list[float]) -> dict[str, Any]:
    s = statistics.median(step)
    return {
        "ttft_ms": statistics.median(first) * 1e3,
        "ms_per_token": s * 1e3,
        "tokens_per_s": 1 / s,
        "runs": len(first),
    }


def anchors(python: str | None, kind: str, model_dir: Path, contexts: list[int], new: int,
            repeat: int) -> dict[str, Any]:  # fmt: skip
    if not python:
        return {"error": "not run: no environment given"}
    script = Path(__file__).with_name("_decode_anchors.py")
    cmd = [python, str(script), kind, str(model_dir), ",".join(map(str, contexts)), str(new),
           str(repeat)]  # fmt: skip
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        return {"error": "timed out after 30 minutes"}
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1][:500]}
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("model_dir", type=Path, help="benchmarks/decode_model.py's output folder")
    ap.add_argument("--contexts", default="128,1024")
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of every case, anchors too")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each case per round")
    ap.add_argument("--optimum-python")
    ap.add_argument("--ortgenai-python")
    ap.add_argument("--ovgenai-python")
    args = ap.parse_args()
    contexts = [int(c) for c in args.contexts.split(",")]
    path = args.model_dir / "onnx" / "model.onnx"
    vocab = json.loads((args.model_dir / "MODEL.json").read_text())["config"]["vocab_size"]
    rng = np.random.default_rng(0)
    prompts = {c: rng.integers(4, vocab, (1, c), dtype=np.int64) for c in contexts}

    ort_engine = infer.Engine.load(path, backend="onnxruntime")
    ov_engine = infer.Engine.load(path, backend="openvino")
    default = infer.Engine.load(path)
    streams: dict[str, Stream] = {"raw onnxruntime loop": raw_loop(path)}
    caches: dict[str, str] = {"raw onnxruntime loop": "numpy, fed back every step"}
    cases: list[tuple[Any, ...]] = [
        ("infer onnxruntime", ort_engine, "auto"),
        ("infer openvino stateful", ov_engine, "auto"),
        ("infer openvino host loop", ov_engine, "host"),
        ("infer default", default, "auto"),
    ]
    ir = args.model_dir / "openvino-stateless" / "openvino_model.xml"
    if ir.exists():  # the graph openvino-genai runs, before it was made stateful
        cases.append(
            ("infer openvino stateful, IR", infer.Engine.load(ir, backend="openvino"), "auto")
        )
    genai = args.model_dir / "onnxruntime-genai" / "model.onnx"
    if genai.exists():  # the graph onnxruntime-genai runs (its builder's: fused GQA, rotary)
        head = json.loads(genai.with_name("genai_config.json").read_text())["model"]["decoder"]
        cases.append(
            (
                "infer onnxruntime, genai graph",
                infer.Engine.load(genai, backend="onnxruntime"),
                "auto",
                {"kv_cache_dim": head["head_size"]},
            )
        )
    for label, engine, cache, *dims in cases:
        streams[label], caches[label] = infer_stream(engine, cache, *dims)
    chosen = next((a for a in default.selection if a.verdict == "selected"), None)

    anchor_envs = {
        "optimum": args.optimum_python,
        "onnxruntime-genai": args.ortgenai_python,
        "openvino-genai": args.ovgenai_python,
        "openvino-genai PA": args.ovgenai_python,
    }
    # samples[context][case]: (seconds to first token, seconds per later token) per run, and
    # each round's median tokens/s, for ratios of one round (neighbouring measurements)
    samples: dict[int, dict[str, list[tuple[float, float]]]] = {
        c: {k: [] for k in (*streams, *anchor_envs)} for c in contexts
    }
    per_round: dict[int, dict[str, list[float]]] = {
        c: {k: [] for k in (*streams, *anchor_envs)} for c in contexts
    }
    errors: dict[str, str] = {}
    # a warm-up run of each, and the tokens each gives
    given = {
        c: {k: timed(s, prompts[c], args.new)[2] for k, s in streams.items()} for c in contexts
    }
    reference = {c: given[c]["raw onnxruntime loop"] for c in contexts}
    same = {c: {k: v == reference[c] for k, v in given[c].items()} for c in contexts}
    for r in range(args.rounds):
        for c in contexts:
            for k, s in streams.items():
                runs = [timed(s, prompts[c], args.new)[:2] for _ in range(args.repeat)]
                samples[c][k] += runs
                per_round[c][k].append(1 / statistics.median(t for _, t in runs))
        for kind, python in anchor_envs.items():
            if kind in errors:
                continue
            got = anchors(python, kind, args.model_dir, contexts, args.new, args.repeat)
            if "error" in got:
                errors[kind] = got["error"]
                continue
            for c in contexts:
                row = got[str(c)]
                samples[c][kind] += [(row["ttft_ms"] / 1e3, row["ms_per_token"] / 1e3)]
                per_round[c][kind].append(row["tokens_per_s"])
                same[c][kind] = row["tokens"] == reference[c]
        print(f"round {r + 1} of {args.rounds} done")

    results: dict[str, Any] = {}
    for c in contexts:
        results[str(c)] = {}
        for k, runs in samples[c].items():
            if not runs:
                results[str(c)][k] = {"error": errors.get(k, "no figure")}
                continue
            row = figures([f for f, _ in runs], [t for _, t in runs])
            row.update(cache=caches.get(k, "its own"), same_tokens=same[c].get(k))
            results[str(c)][k] = row
        print(f"context {c}:")
        for k, v in results[str(c)].items():
            if "error" in v:
                print(f"  {k:30s} not run: {v['error']}")
                continue
            print(f"  {k:30s} first {v['ttft_ms']:8.1f} ms  {v['ms_per_token']:6.2f} ms/token "
                  f"{v['tokens_per_s']:7.1f} tokens/s  same tokens: {v['same_tokens']}")  # fmt: skip

    pairs = {
        "infer onnxruntime / raw onnxruntime loop": ("infer onnxruntime", "raw onnxruntime loop"),
        "infer onnxruntime / optimum": ("infer onnxruntime", "optimum"),
        "infer onnxruntime / onnxruntime-genai": ("infer onnxruntime", "onnxruntime-genai"),
        "infer onnxruntime, genai graph / onnxruntime-genai": (
            "infer onnxruntime, genai graph",
            "onnxruntime-genai",
        ),
        "infer openvino stateful / host loop": (
            "infer openvino stateful",
            "infer openvino host loop",
        ),
        "infer openvino stateful / openvino-genai": ("infer openvino stateful", "openvino-genai"),
        "infer openvino stateful, IR / openvino-genai": (
            "infer openvino stateful, IR",
            "openvino-genai",
        ),
        "infer openvino stateful / openvino-genai PA": (
            "infer openvino stateful",
            "openvino-genai PA",
        ),
    }
    infer_rows = ["infer onnxruntime", "infer openvino stateful", "infer openvino host loop"]
    ratios: dict[str, Any] = {}
    for c in contexts:
        rounds = per_round[c]

        def ratio(a: str, b: str, rounds: dict = rounds) -> float | None:
            if not rounds.get(a) or not rounds.get(b) or len(rounds[a]) != len(rounds[b]):
                return None
            return statistics.median(x / y for x, y in zip(rounds[a], rounds[b]))

        ratios[str(c)] = {name: ratio(a, b) for name, (a, b) in pairs.items()}
        best = [max(rounds[k][i] for k in infer_rows) for i in range(args.rounds)]
        ratios[str(c)]["infer default / best infer backend"] = statistics.median(
            d / b for d, b in zip(rounds["infer default"], best)
        )
        print(
            f"ratios (tokens/s, median over rounds) at context {c}: "
            + json.dumps(ratios[str(c)], indent=1)
        )

    _results.write(
        "decode",
        {
            "model": str(args.model_dir),
            "model_config": json.loads((args.model_dir / "MODEL.json").read_text()),
            "new_tokens": args.new,
            "batch": 1,
            "rounds": args.rounds,
            "repeat": args.repeat,
            "default_choice": chosen.reason if chosen else None,
            "default_backend": default.backend,
            "results": results,
            "ratios_tokens_per_s": ratios,
        },
        note="one run on a shared 2-core machine: compare the ratios of this run, not figures "
        "across runs; every case, the anchors (each in its own process) too, runs once a "
        "round, so a ratio is the median over rounds of neighbouring measurements",
    )


if __name__ == "__main__":
    main()
