"""Bound runs (`engine.bind()`) vs ONNX Runtime's own `InferenceSession.run`, on the CPU.

Cases, each against raw `sess.run` on the same model in the same process:

- infer's binding, the same input array every call (a frame buffer refilled in place);
- infer's binding, a new input array every call;
- `engine.run` (no binding);
- raw ONNX Runtime IOBinding bound once (`run_with_iobinding`): the floor a binding can reach.

Models: a 1-node Relu on [1, 3] (pure per-call overhead) and two CNNs. Each case is timed
in blocks of calls, cases taking turns block by block. The headline ratio is the median, over
rounds, of each block against the sess.run block of the same round (the machines here are
shared and noisy: only neighbouring measurements compare); the best-block ratio is kept too.

    python benchmarks/binding_ort.py [--number 1000] [--repeat 40]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import models  # noqa: E402

import infer  # noqa: E402
from benchmarks import _results, _timing  # noqa: E402


def measure(label: str, model, x: np.ndarray, number: int, repeat: int) -> dict:
    name_in = model.graph.input[0].name
    name_out = model.graph.output[0].name
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    engine = infer.Engine.load(model, backend="onnxruntime")
    binding = engine.bind()
    feeds = {name_in: x}
    fresh = [x.copy() for _ in range(8)]
    counter = iter(range(1 << 62))

    def bound_new_array():
        return binding.run({name_in: fresh[next(counter) % 8]})

    io = sess.io_binding()
    io.bind_cpu_input(name_in, x)
    io.bind_output(name_out)
    sess.run_with_iobinding(io)
    y = np.empty(io.get_outputs()[0].shape(), np.float32)
    io.bind_ortvalue_output(name_out, ort.OrtValue.ortvalue_from_numpy(y))

    np.testing.assert_array_equal(binding.run(feeds)[name_out], sess.run([name_out], feeds)[0])
    cases = {
        "sess.run (raw)": lambda: sess.run([name_out], feeds),
        "engine.bind().run, same input": lambda: binding.run(feeds),
        "engine.bind().run, new input": bound_new_array,
        "engine.run": lambda: engine.run(feeds),
        "IOBinding bound once (raw)": lambda: sess.run_with_iobinding(io),
    }
    times = _timing.blocks(cases, number, repeat, warmup=max(10, number // 10))
    out: dict = {"model": label, "input": list(x.shape)}
    base = times["sess.run (raw)"]
    out["best_us"] = {k: min(v) * 1e6 for k, v in times.items()}
    out["best_ratio_vs_sess_run"] = {k: min(v) / min(base) for k, v in times.items()}
    # Each block against the sess.run block of the same round: steadiest under a shared load.
    out["paired_ratio_vs_sess_run"] = {k: _timing.paired_ratio(v, base) for k, v in times.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=1000, help="calls per block (1-node model)")
    parser.add_argument("--repeat", type=int, default=40)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    runs = [
        measure(
            "1-node Relu [1, 3]",
            models.relu(batch=1, width=3),
            np.ones((1, 3), np.float32),
            args.number,
            args.repeat,
        ),
        measure(
            "CNN 32x32, batch 8 (tests/models.cnn)",
            models.cnn(),
            rng.standard_normal((8, 3, 32, 32)).astype(np.float32),
            max(1, args.number // 50),
            args.repeat,
        ),
        measure(
            "CNN 224x224, batch 1 (tests/models.cnn(size=224))",
            models.cnn(size=224),
            rng.standard_normal((1, 3, 224, 224)).astype(np.float32),
            max(1, args.number // 50),
            args.repeat,
        ),
    ]
    print(f"\nONNX Runtime {ort.__version__}, CPU: best block per call; ratio to sess.run:")
    print("median of same-round block pairs (ratio of best blocks)")
    targets = {"1-node Relu [1, 3]": 0.75}
    for r in runs:
        print(f"\n{r['model']}")
        for k, v in r["best_us"].items():
            paired, best = r["paired_ratio_vs_sess_run"][k], r["best_ratio_vs_sess_run"][k]
            print(f"  {k:32s} {v:10.2f} us  {paired:5.2f}x ({best:5.2f}x)")
        target = targets.get(r["model"], 1.0)
        print(f"  target for the binding: <= {target:.2f}x of sess.run")
    _results.write(
        "binding_ort",
        {
            "number": args.number,
            "repeat": args.repeat,
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
