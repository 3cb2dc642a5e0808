"""Fuzzing Engine.load with 500 damaged model files: none may crash the process, and every
failure must be an InferError subclass.

The files are made from valid models by bit flips, truncation, wrong magic bytes, huge declared
dimensions, cyclic graphs, missing initializers, broken tensors and fake TensorRT plans. They go
through `Engine.load` (and, when a file loads, one run with feeds made from its specs) in child
processes, a batch per process: a runtime crash shows as a child killed by a signal, and the file
it was on is reported.

One child fuzzes one list of files: `python -m tests.test_fuzz_models WORKLIST OUT`.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from . import models

ROOT = Path(__file__).resolve().parent.parent
COUNT = 500
BATCHES = 5
SEED = 20261126


# -- the corpus --------------------------------------------------------------------------------


def _nested_if() -> onnx.ModelProto:
    """cond: bool, x: float[N] -> If(cond, then: x + 1, else: x * 2), with initializers in branches."""

    def branch(op: str, value: float, name: str) -> onnx.GraphProto:
        return helper.make_graph(
            [helper.make_node(op, ["x", f"{name}_c"], [f"{name}_out"])],
            name,
            [],
            [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, ["N"])],
            initializer=[numpy_helper.from_array(np.array([value], np.float32), f"{name}_c")],
        )

    graph = helper.make_graph(
        [
            helper.make_node(
                "If",
                ["cond"],
                ["y"],
                then_branch=branch("Add", 1.0, "then"),
                else_branch=branch("Mul", 2.0, "else"),
            )
        ],
        "g",
        [
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def seed_models() -> list[onnx.ModelProto]:
    return [
        models.relu(),
        models.multi_io(),
        models.cnn(channels=4, size=8, depth=2),
        models.bf16_cast(),
        _nested_if(),
    ]


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _bitflip(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.choice([1, 2, 4, 16, 64])):
        i = rng.randrange(len(buf))
        buf[i] ^= 1 << rng.randrange(8)
    return bytes(buf)


def _truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(0, len(data))]


def _magic(rng: random.Random, data: bytes) -> bytes:
    head = rng.choice(
        [b"\x00\x00\x00\x00", b"PK\x03\x04", b"\x89HDF", b"\x7fELF", b"\x0a\x05", b'{"a"']
    )
    return head + data[len(head) :]


def _fake_plan(rng: random.Random, data: bytes) -> bytes:
    body = rng.choice([b"", rng.randbytes(rng.randrange(1, 4096)), data])
    return rng.choice([b"ftrt", b"ptrt"]) + body


def _fake_ir(rng: random.Random, data: bytes) -> bytes:
    return rng.choice(
        [b'<?xml version="1.0"?>\n<net name="x" version="11"><layers/></net>', b"<net", b"<?xml "]
    ) + rng.randbytes(rng.randrange(0, 64))


def _random_bytes(rng: random.Random, data: bytes) -> bytes:
    return rng.randbytes(rng.randrange(0, 2048))


def _huge_dims(rng: random.Random, model: onnx.ModelProto) -> onnx.ModelProto:
    m = _copy(model)
    huge = rng.choice([2**31, 2**40, 2**62, 2**63 - 1, -(2**40)])
    where = rng.choice(["input", "output", "initializer"])
    if where == "initializer" and m.graph.initializer:
        t = rng.choice(list(m.graph.initializer))
        if t.dims:
            t.dims[rng.randrange(len(t.dims))] = huge
        else:
            t.dims.append(huge)
    else:
        values = m.graph.input if where == "input" else m.graph.output
        shape = rng.choice(list(values)).type.tensor_type.shape
        if shape.dim:
            shape.dim[rng.randrange(len(shape.dim))].dim_value = huge
        else:
            shape.dim.add().dim_value = huge
    return m


def _cyclic(rng: random.Random, model: onnx.ModelProto) -> onnx.ModelProto:
    m = _copy(model)
    nodes = m.graph.node
    if len(nodes) >= 2:
        a, b = rng.sample(range(len(nodes)), 2)
        nodes[a].input[0] = nodes[b].output[0]
        nodes[b].input[0] = nodes[a].output[0]
    else:  # a node that consumes its own output
        nodes[0].input[0] = nodes[0].output[0]
    return m


def _missing_initializer(rng: random.Random, model: onnx.ModelProto) -> onnx.ModelProto:
    m = _copy(model)
    if m.graph.initializer and rng.random() < 0.7:
        del m.graph.initializer[rng.randrange(len(m.graph.initializer))]
    else:
        node = rng.choice(list(m.graph.node))
        node.input.append("nowhere")
    return m


def _broken_tensor(rng: random.Random, model: onnx.ModelProto) -> onnx.ModelProto:
    m = _copy(model)
    kind = rng.choice(["raw_short", "raw_long", "dtype", "undefined", "float_data", "dims_neg"])
    if not m.graph.initializer:
        m.graph.initializer.append(numpy_helper.from_array(np.ones(4, np.float32), "extra"))
        m.graph.node[0].input.append("extra")
    t = rng.choice(list(m.graph.initializer))
    if kind == "raw_short":
        t.raw_data = t.raw_data[: len(t.raw_data) // 2]
    elif kind == "raw_long":
        t.raw_data = t.raw_data + rng.randbytes(13)
    elif kind == "dtype":
        t.data_type = rng.choice([9999, 8, 14, 23])  # unknown, string, complex64, float4e2m1
    elif kind == "undefined":
        t.data_type = TensorProto.UNDEFINED
    elif kind == "float_data":
        t.ClearField("raw_data")
        t.float_data.extend([1.0] * rng.choice([0, 1, 3]))
    else:
        t.dims.append(-3)
    return m


def _structure(rng: random.Random, model: onnx.ModelProto) -> onnx.ModelProto:
    m = _copy(model)
    kind = rng.choice(
        [
            "opset",
            "ir",
            "op",
            "domain",
            "dup_output",
            "no_graph_outputs",
            "input_dtype",
            "attr",
            "empty",
        ]
    )
    if kind == "opset":
        m.opset_import[0].version = rng.choice([0, 1, 999, -5])
    elif kind == "ir":
        m.ir_version = rng.choice([0, 1, 99, 2**40])
    elif kind == "op":
        rng.choice(list(m.graph.node)).op_type = rng.choice(["", "NoSuchOp", "Relu\x00", "If"])
    elif kind == "domain":
        rng.choice(list(m.graph.node)).domain = "com.nowhere"
    elif kind == "dup_output":
        for node in m.graph.node:
            node.output[0] = m.graph.output[0].name
    elif kind == "no_graph_outputs":
        del m.graph.output[:]
    elif kind == "input_dtype":
        rng.choice(list(m.graph.input)).type.tensor_type.elem_type = rng.choice([0, 9999, 8])
    elif kind == "attr":
        node = rng.choice(list(m.graph.node))
        node.attribute.append(helper.make_attribute(rng.choice(["axis", "to", "pads"]), -(2**40)))
    else:
        del m.graph.node[:]
    return m


BYTE_MUTATIONS = {
    "bitflip": (_bitflip, 120),
    "truncate": (_truncate, 60),
    "magic": (_magic, 30),
    "tensorrt_plan": (_fake_plan, 40),
    "openvino_xml": (_fake_ir, 15),
    "random": (_random_bytes, 15),
}
PROTO_MUTATIONS = {
    "huge_dims": (_huge_dims, 55),
    "cyclic": (_cyclic, 35),
    "missing_initializer": (_missing_initializer, 40),
    "broken_tensor": (_broken_tensor, 45),
    "structure": (_structure, 45),
}


def make_corpus(folder: Path, count: int = COUNT, seed: int = SEED) -> list[tuple[Path, str]]:
    """`count` damaged model files in `folder`, each with the mutation that made it."""
    rng = random.Random(seed)
    seeds = seed_models()
    kinds = [(name, fn, True) for name, (fn, n) in BYTE_MUTATIONS.items() for _ in range(n)]
    kinds += [(name, fn, False) for name, (fn, n) in PROTO_MUTATIONS.items() for _ in range(n)]
    assert len(kinds) == COUNT
    kinds = kinds[:count]
    files = []
    for i, (name, fn, on_bytes) in enumerate(kinds):
        base = rng.choice(seeds)
        data = fn(rng, base.SerializeToString()) if on_bytes else fn(rng, base).SerializeToString()
        suffix = (
            ".engine" if name == "tensorrt_plan" else ".xml" if name == "openvino_xml" else ".onnx"
        )
        path = folder / f"{i:03d}_{name}{suffix}"
        path.write_bytes(data)
        files.append((path, name))
    return files


# -- the worker (runs in a child process) ------------------------------------------------------


def _feeds(engine) -> dict | None:
    feeds = {}
    for spec in engine.inputs:
        if spec.kind != "tensor" or spec.shape is None or spec.dtype == object:
            return None
        shape = [d if isinstance(d, int) and 0 <= d <= 64 else 2 for d in spec.shape]
        feeds[spec.name] = np.ones(shape, spec.dtype)
    return feeds


def work(worklist: Path, out: Path) -> None:
    """Load (and run once) each file in `worklist`; one JSON line per file into `out`."""
    import infer

    with open(out, "a", encoding="utf-8") as log:
        for path in json.loads(worklist.read_text()):
            log.write(json.dumps({"file": path, "event": "start"}) + "\n")
            log.flush()
            record = {"file": path, "event": "done", "stage": "load"}
            try:
                engine = infer.Engine.load(path, "cpu", cache=False)
                record["backend"] = engine.backend
                feeds = _feeds(engine)
                if feeds is not None:
                    record["stage"] = "run"
                    engine.run(feeds)
                engine.close()
                record["outcome"] = "ok"
            except Exception as e:  # the point: record what escaped, whatever it is
                record["outcome"] = "error"
                record["error"] = type(e).__name__
                record["infer_error"] = isinstance(e, infer.InferError)
                record["message"] = str(e)[:300]
            log.write(json.dumps(record) + "\n")
            log.flush()


# -- the test ----------------------------------------------------------------------------------


def _run_batch(files: list[str], tmp: Path, index: int) -> tuple[list[dict], list[dict]]:
    """Run `files` in child processes; a child killed by a signal is recorded and the rest go on."""
    records: list[dict] = []
    crashes: list[dict] = []
    remaining = list(files)
    attempt = 0
    while remaining:
        worklist = tmp / f"batch{index}.{attempt}.json"
        out = tmp / f"batch{index}.{attempt}.jsonl"
        worklist.write_text(json.dumps(remaining))
        proc = subprocess.run(
            [sys.executable, "-m", "tests.test_fuzz_models", str(worklist), str(out)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            errors="replace",  # runtimes print parts of the damaged files they parse
            timeout=600,
            env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        )
        lines = [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []
        done = [r for r in lines if r["event"] == "done"]
        records += done
        finished = {r["file"] for r in done}
        started = [r["file"] for r in lines if r["event"] == "start"]
        if proc.returncode == 0:
            break
        culprit = started[-1] if started and started[-1] not in finished else None
        crashes.append(
            {
                "file": culprit,
                "returncode": proc.returncode,
                "signal": signal.Signals(-proc.returncode).name if proc.returncode < 0 else None,
                "stderr": proc.stderr[-2000:],
            }
        )
        if culprit is None:
            break
        remaining = remaining[remaining.index(culprit) + 1 :]
        attempt += 1
    return records, crashes


@pytest.mark.slow
def test_damaged_models_never_crash_and_fail_with_infer_errors(tmp_path):
    corpus = make_corpus(tmp_path)
    assert len(corpus) == COUNT
    kinds = {str(p): k for p, k in corpus}
    paths = [str(p) for p, _ in corpus]
    records, crashes = [], []
    for i in range(BATCHES):
        r, c = _run_batch(paths[i::BATCHES], tmp_path, i)
        records += r
        crashes += c
    assert not crashes, "runtime crashes (file, signal):\n" + "\n".join(
        f"  {c['file']} ({kinds.get(c['file'])}): {c['signal'] or c['returncode']}\n{c['stderr']}"
        for c in crashes
    )
    assert len(records) == COUNT
    escaped = [r for r in records if r["outcome"] == "error" and not r["infer_error"]]
    assert not escaped, "non-InferError exceptions:\n" + "\n".join(
        f"  {Path(r['file']).name} at {r['stage']}: {r['error']}: {r['message']}" for r in escaped
    )
    # The corpus is damaged, not destroyed: some files still load (a flipped bit in a weight),
    # so the run path is exercised too.
    outcomes = Counter((kinds[r["file"]], r["outcome"]) for r in records)
    assert sum(n for (_, o), n in outcomes.items() if o == "ok") > 10, outcomes
    assert sum(n for (_, o), n in outcomes.items() if o == "error") > COUNT // 2, outcomes


def test_the_corpus_is_deterministic(tmp_path):
    a = make_corpus(tmp_path / "a", count=40) if (tmp_path / "a").mkdir() is None else None
    b = make_corpus(tmp_path / "b", count=40) if (tmp_path / "b").mkdir() is None else None
    assert [p.read_bytes() for p, _ in a] == [p.read_bytes() for p, _ in b]


if __name__ == "__main__":
    work(Path(sys.argv[1]), Path(sys.argv[2]))
