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
- the anchors, each in its own environment where it installed (see benchmarks/_decode_cases.py):
  optimum's `ORTModelForCausalLM.generate`, onnxruntime-genai (its builder's model from the same
  checkpoint: its own graph, with fused GroupQueryAttention and rotary kernels), openvino-genai
  (optimum-intel's OpenVINO export of the same checkpoint) with its stateful SDPA backend (as
  infer's) and with its default paged attention (prefix caching off).

Every case runs in a process of its own (no other runtime's threads on the cores while it is
timed: the first version, all of infer's cases in one process, timed them 2-3x slower per token
than onnxruntime-genai and openvino-genai in processes of their own), once in each of ROUNDS rounds (REPEAT runs a round, after a warm-up), so
that slow spells of the shared, noisy machines here hit all cases alike: a figure is the median
over all runs, a ratio the median over rounds of the two cases' figures in that round (compare
the ratios of one run, not figures across runs). The cases are in benchmarks/_decode_cases.py.
Time to first token is the prompt's prefill plus the first token; ms/token the mean of the
later steps of a run; tokens/s its inverse. Every case is checked to give the raw loop's tokens.

    python benchmarks/decode.py MODEL_DIR [--contexts 128,1024] [--new 32] [--rounds 3] [--repeat 2]
        [--optimum-python PY] [--ortgenai-python PY] [--ovgenai-python PY]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import _readme, _results  # noqa: E402
from benchmarks._decode_cases import CASES, INFER_ENV  # noqa: E402

PAIRS = {
    "infer onnxruntime / raw onnxruntime loop": ("infer onnxruntime", "raw onnxruntime loop"),
    "infer onnxruntime / optimum": ("infer onnxruntime", "optimum"),
    "infer onnxruntime / onnxruntime-genai": ("infer onnxruntime", "onnxruntime-genai"),
    "infer onnxruntime, genai graph / onnxruntime-genai": (
        "infer onnxruntime, genai graph",
        "onnxruntime-genai",
    ),
    "infer openvino stateful / host loop": ("infer openvino stateful", "infer openvino host loop"),
    "infer openvino stateful / openvino-genai": ("infer openvino stateful", "openvino-genai"),
    "infer openvino stateful, IR / openvino-genai": (
        "infer openvino stateful, IR",
        "openvino-genai",
    ),
    "infer openvino stateful / openvino-genai PA": ("infer openvino stateful", "openvino-genai PA"),
}
INFER_ROWS = ("infer onnxruntime", "infer openvino stateful", "infer openvino host loop")


def run_case(
    python: str | None, case: str, model_dir: Path, contexts: list[int], new: int, repeat: int
) -> dict[str, Any]:
    """One case in a process of its own: {context: figures} or {"error": ...}."""
    if not python:
        return {"error": "not run: no environment given"}
    script = Path(__file__).with_name("_decode_cases.py")
    cmd = [python, str(script), case, str(model_dir), ",".join(map(str, contexts)), str(new)]
    env = dict(os.environ)
    if case in INFER_ENV:
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    try:
        done = subprocess.run(
            [*cmd, str(repeat)], capture_output=True, text=True, timeout=1800, env=env
        )
    except subprocess.TimeoutExpired:
        return {"error": "timed out after 30 minutes"}
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1][:500]}
    return json.loads(lines[-1])


ROWS = (
    "infer onnxruntime",
    "infer openvino stateful",
    "infer openvino host loop",
    "infer default",
    "raw onnxruntime loop",
    "optimum",
    "infer onnxruntime, genai graph",
    "onnxruntime-genai",
    "infer openvino stateful, IR",
    "openvino-genai",
    "openvino-genai PA",
)


def markdown(data: dict[str, Any]) -> str:
    """The README's table: tokens/s and time to first token per case and context, the ratios."""
    contexts = list(data["results"])
    head = "| case | " + " | ".join(f"ctx {c}: tokens/s | first token" for c in contexts) + " |"
    lines = [head, "|---|" + "---:|---:|" * len(contexts)]
    for k in ROWS:
        cells = []
        for c in contexts:
            v = data["results"][c].get(k, {})
            if "tokens_per_s" in v:
                cells += [f"{v['tokens_per_s']:.1f}", f"{v['ttft_ms']:.0f} ms"]
            else:
                cells += ["–", "–"]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines += ["", "| ratio of tokens/s (median over rounds) | " + " | ".join(contexts) + " |"]
    lines.append("|---|" + "---:|" * len(contexts))
    for name in data["ratios_tokens_per_s"][contexts[0]]:
        vals = [data["ratios_tokens_per_s"][c].get(name) for c in contexts]
        cells = [f"{v:.2f}" if v is not None else "–" for v in vals]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "model_dir", type=Path, nargs="?", help="benchmarks/decode_model.py's output folder"
    )
    ap.add_argument("--contexts", default="128,1024")
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of every case")
    ap.add_argument("--repeat", type=int, default=2, help="timed runs of each case per round")
    ap.add_argument("--optimum-python", help="an environment with optimum-onnx and torch")
    ap.add_argument("--ortgenai-python", help="an environment with onnxruntime-genai")
    ap.add_argument("--ovgenai-python", help="an environment with openvino-genai, optimum-intel")
    ap.add_argument("--readme", type=Path, help="only put this results JSON's table in README.md")
    args = ap.parse_args()
    if args.readme is not None:
        data = json.loads(args.readme.read_text())
        _readme.update("decode-table", markdown(data), data["environment"])
        return
    if args.model_dir is None:
        ap.error("give the model folder (or --readme RESULTS.json)")
    contexts = [int(c) for c in args.contexts.split(",")]
    envs = {case: sys.executable for case in INFER_ENV}
    envs.update(
        {
            "optimum": args.optimum_python,
            "onnxruntime-genai": args.ortgenai_python,
            "openvino-genai": args.ovgenai_python,
            "openvino-genai PA": args.ovgenai_python,
        }
    )
    # rows[context][case]: each round's figures
    rows: dict[int, dict[str, list[dict[str, Any]]]] = {c: {k: [] for k in CASES} for c in contexts}
    errors: dict[str, str] = {}
    for r in range(args.rounds):
        for case in CASES:
            if case in errors:
                continue
            got = run_case(envs[case], case, args.model_dir, contexts, args.new, args.repeat)
            if "error" in got:
                errors[case] = got["error"]
                print(f"  {case}: not run: {got['error']}")
                continue
            for c in contexts:
                rows[c][case].append(got[str(c)])
        print(f"round {r + 1} of {args.rounds} done")

    results: dict[str, Any] = {}
    ratios: dict[str, Any] = {}
    for c in contexts:
        reference = next((x["tokens"] for x in rows[c]["raw onnxruntime loop"]), None)
        results[str(c)] = {}
        for case, got in rows[c].items():
            if not got:
                results[str(c)][case] = {"error": errors.get(case, "no figure")}
                continue
            step = statistics.median(x["ms_per_token"] for x in got)
            results[str(c)][case] = {
                "ttft_ms": statistics.median(x["ttft_ms"] for x in got),
                "ms_per_token": step,
                "tokens_per_s": 1e3 / step,
                "rounds": len(got),
                "runs_per_round": args.repeat,
                "cache": got[0]["cache"],
                "same_tokens": all(x["tokens"] == reference for x in got),
            }
        print(f"context {c}:")
        for k, v in results[str(c)].items():
            if "error" in v:
                print(f"  {k:30s} not run: {v['error']}")
                continue
            print(f"  {k:30s} first {v['ttft_ms']:8.1f} ms  {v['ms_per_token']:6.2f} ms/token "
                  f"{v['tokens_per_s']:7.1f} tokens/s  same tokens: {v['same_tokens']}")  # fmt: skip

        tps = {k: [x["tokens_per_s"] for x in got] for k, got in rows[c].items()}

        def ratio(a: str, b: str, tps: dict = tps) -> float | None:
            if not tps[a] or len(tps[a]) != len(tps[b]):
                return None
            return statistics.median(x / y for x, y in zip(tps[a], tps[b]))

        ratios[str(c)] = {name: ratio(a, b) for name, (a, b) in PAIRS.items()}
        if all(tps[k] and len(tps[k]) == len(tps["infer default"]) for k in INFER_ROWS):
            best = [max(tps[k][i] for k in INFER_ROWS) for i in range(len(tps["infer default"]))]
            ratios[str(c)]["infer default / best infer backend"] = statistics.median(
                d / b for d, b in zip(tps["infer default"], best)
            )
        print(f"ratios (tokens/s, median over rounds) at context {c}:")
        for name, value in ratios[str(c)].items():
            print(f"  {name:52s} {value:.2f}" if value is not None else f"  {name:52s} -")

    model_json = args.model_dir / "MODEL.json"
    data = {
        "model": str(args.model_dir),
        "model_config": json.loads(model_json.read_text()) if model_json.exists() else None,
        "new_tokens": args.new,
        "batch": 1,
        "rounds": args.rounds,
        "repeat": args.repeat,
        "results": results,
        "ratios_tokens_per_s": ratios,
    }
    path = _results.write(
        "decode",
        data,
        note="one run on a shared 2-core machine: compare the ratios of this run, not figures "
        "across runs; every case runs in a process of its own, once a round, and a ratio is "
        "the median over rounds of neighbouring measurements",
    )
    print(markdown(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
