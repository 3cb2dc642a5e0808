"""Make the committed sequence-model test files: Hugging Face architectures, random weights, tiny dims.

Runs in an export environment, never in the test suite (which needs no torch):

    python -m venv /work/venvs/export
    /work/venvs/export/bin/pip install "torch==2.13.0+cpu" optimum-onnx accelerate "onnx==1.23.2" "onnxruntime==1.32.0"
    /work/venvs/export/bin/python tests/data/sequence/make_models.py

Each model is built from a config in code with a fixed seed (no hub access), saved with `save_pretrained`
and exported by optimum's `main_export` from that folder, at the exporter's default opset. The script then
checks that every file runs in ONNX Runtime (decoders with past length 0 and > 0) and writes MODELS.json:
the versions that made the files, the configs, and each file's inputs and outputs with their symbolic dims.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch
import transformers
from onnx import TensorProto, helper, numpy_helper
from optimum.exporters.onnx import main_export

HERE = Path(__file__).resolve().parent
SEED = 0
LIMIT = 2 * 1024 * 1024  # bytes per file: small enough to commit


# What the files are and how the runtimes take them (measured with onnxruntime 1.32.0 and OpenVINO 2026.4.1
# on CPU, in the test environment; tests/test_sequence_models.py checks the ones that can fail).
NOTES = {
    "llama.onnx": "optimum's model.onnx for text-generation-with-past: one decoder with past that also runs "
    "at past length 0 (a past of shape [batch, 2, 0, 16] for the prefill); no merged If.",
    "gpt2.onnx": "optimum's model.onnx for text-generation-with-past, as llama.onnx (no GQA: 4 KV heads). "
    "Tied weights deduplicated: one initializer feeds the token-embedding Gather and, through a Transpose, "
    "the lm_head MatMul (T5's decoders likewise).",
    "bert.onnx": "optimum's feature-extraction export of BertModel: last_hidden_state only (no pooler output).",
    "t5_*.onnx": "optimum wrote encoder_model.onnx -> t5_encoder.onnx, decoder_model_merged.onnx -> "
    "t5_decoder.onnx (If on use_cache_branch: false for the first step, which computes the cross-attention "
    "past from encoder_hidden_states; its present.N.encoder.* outputs on the cache branch are placeholders, "
    "keep the first step's), decoder_model.onnx -> t5_decoder_no_past.onnx and decoder_with_past_model.onnx "
    "-> t5_decoder_with_past.onnx (the two-file form; the with-past file takes the encoder past as input). "
    "decoder_start_token_id is 0. OpenVINO 2026.4's CPU plugin cannot compile t5_decoder.onnx ('If operation "
    "with dynamic rank'); it compiles the two-file form. onnx's reference evaluator fails on t5_decoder.onnx.",
    "bert_int8w.onnx": "bert.onnx with its 12 MatMul weights int8, per-output-channel symmetric scales, "
    "DequantizeLinear(axis=1) in the graph. ONNX Runtime's default graph optimizations fuse DequantizeLinear + "
    "MatMul into com.microsoft MatMulNBits(bits=8, accuracy_level=4), which quantizes activations to int8 on the "
    "fly: 0.045 from the unoptimized graph at [2, 16] (outputs up to 3.4); session config "
    "session.qdq_matmulnbits_accuracy_level=0 gives 1.2e-6. OpenVINO's CPU default "
    "(DYNAMIC_QUANTIZATION_GROUP_SIZE 32) is 0.045 off too, 1.8e-6 with it at 0. onnx 1.23's reference "
    "evaluator has no DequantizeLinear for opset 18 and cannot load it.",
}


def _configs() -> dict[str, Any]:
    return {
        "llama": transformers.LlamaConfig(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,  # grouped-query attention: 2 query heads per KV head
            max_position_embeddings=256,
            rope_theta=10000.0,
            tie_word_embeddings=False,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
            initializer_range=0.2,  # larger than the default 0.02: greedy tokens vary instead of repeating
        ),
        "gpt2": transformers.GPT2Config(
            vocab_size=512,
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_positions=256,
            n_inner=128,
            bos_token_id=1,
            eos_token_id=2,
            initializer_range=0.5,  # the default 0.02 answers one token forever
        ),
        "bert": transformers.BertConfig(
            vocab_size=512,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=256,
            type_vocab_size=2,
            pad_token_id=0,
            initializer_range=0.2,
        ),
        "t5": transformers.T5Config(
            vocab_size=512,
            d_model=64,
            d_kv=16,
            d_ff=128,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            relative_attention_num_buckets=32,
            relative_attention_max_distance=128,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
            initializer_factor=5.0,  # the default 1.0 answers one token forever
        ),
    }


_MODEL_CLASS = {
    "llama": (transformers.LlamaForCausalLM, "text-generation-with-past"),
    "gpt2": (transformers.GPT2LMHeadModel, "text-generation-with-past"),
    "bert": (transformers.BertModel, "feature-extraction"),
    "t5": (transformers.T5ForConditionalGeneration, "text2text-generation-with-past"),
}

# optimum's file name -> committed file name
_RENAME = {
    "llama": {"model.onnx": "llama.onnx"},
    "gpt2": {"model.onnx": "gpt2.onnx"},
    "bert": {"model.onnx": "bert.onnx"},
    "t5": {
        "encoder_model.onnx": "t5_encoder.onnx",
        "decoder_model_merged.onnx": "t5_decoder.onnx",
        "decoder_with_past_model.onnx": "t5_decoder_with_past.onnx",
        "decoder_model.onnx": "t5_decoder_no_past.onnx",
    },
}


def export(name: str, config: Any, work: Path) -> list[str]:
    """Build `name` from its config with a fixed seed, export it with optimum, copy the files here."""
    cls, task = _MODEL_CLASS[name]
    torch.manual_seed(SEED)
    model = cls(config).eval()
    hf = work / name / "hf"
    out = work / name / "onnx"
    model.save_pretrained(hf)
    main_export(str(hf), output=str(out), task=task, device="cpu", do_validation=True)
    made = sorted(p.name for p in out.glob("*.onnx"))
    print(f"{name}: optimum wrote {made}")
    written = []
    for src, dst in _RENAME[name].items():
        if (out / src).exists():
            # one file per model: external data would not survive a rename, and these are small
            m = onnx.load(out / src)
            onnx.save(m, HERE / dst)
            written.append(dst)
    return written


def int8_weights(src: Path, dst: Path) -> None:
    """Rewrite every MatMul whose B is a float initializer to int8 weights dequantized in the graph.

    Per-output-channel symmetric scales (DequantizeLinear axis=1 on the [K, N] weight), zero point 0:
    the shape of a weight-compressed encoder (what a torch dynamo export of an int8-weight model, or
    optimum/NNCF weight compression, leaves in the graph).
    """
    model = onnx.load(src)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    new_nodes = []
    rewritten = 0
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits:
            w = numpy_helper.to_array(inits[node.input[1]])
            if w.dtype == np.float32 and w.ndim == 2:
                base = node.input[1]
                scale = (np.abs(w).max(axis=0) / 127.0).astype(np.float32)
                scale[scale == 0] = 1.0
                q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
                graph.initializer.remove(inits.pop(base))
                graph.initializer.extend(
                    [
                        numpy_helper.from_array(q, base + "_int8"),
                        numpy_helper.from_array(scale, base + "_scale"),
                        numpy_helper.from_array(
                            np.zeros(w.shape[1], np.int8), base + "_zero_point"
                        ),
                    ]
                )
                new_nodes.append(
                    helper.make_node(
                        "DequantizeLinear",
                        [base + "_int8", base + "_scale", base + "_zero_point"],
                        [base + "_dequantized"],
                        name=base + "_DequantizeLinear",
                        axis=1,
                    )
                )
                node.input[1] = base + "_dequantized"
                rewritten += 1
        new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    assert rewritten > 0, "no MatMul with a float initializer weight to rewrite"
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, dst)
    print(f"bert_int8w: {rewritten} MatMul weights stored int8")


def _dims(value: onnx.ValueInfoProto) -> list[str | int]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def describe(path: Path) -> dict[str, Any]:
    """A file's size, opsets and I/O names, dtypes and (symbolic) dims, read from the ONNX file."""
    m = onnx.load(path)
    io = {
        kind: [
            {
                "name": v.name,
                "dtype": TensorProto.DataType.Name(v.type.tensor_type.elem_type).lower(),
                "dims": _dims(v),
            }
            for v in values
        ]
        for kind, values in (("inputs", m.graph.input), ("outputs", m.graph.output))
    }
    ops = sorted({n.op_type for n in m.graph.node})
    return {
        "bytes": path.stat().st_size,
        "opsets": {o.domain or "ai.onnx": o.version for o in m.opset_import},
        "ir_version": m.ir_version,
        **io,
        "op_types": ops,
    }


def _feeds(session: onnxruntime.InferenceSession, batch: int, seq: int, past: int) -> dict:
    """Feeds for an optimum export: ids in the vocabulary, masks of ones, positions after the past."""
    rng = np.random.default_rng(SEED)
    feeds = {}
    for i in session.get_inputs():
        if i.name in ("input_ids", "decoder_input_ids"):
            feeds[i.name] = rng.integers(3, 512, (batch, seq), dtype=np.int64)
        elif i.name == "attention_mask" and "past_key_values.0.key" in [
            x.name for x in session.get_inputs()
        ]:
            feeds[i.name] = np.ones((batch, past + seq), np.int64)
        elif i.name in ("attention_mask", "encoder_attention_mask"):
            feeds[i.name] = np.ones((batch, seq), np.int64)
        elif i.name == "token_type_ids":
            feeds[i.name] = np.zeros((batch, seq), np.int64)
        elif i.name == "position_ids":
            feeds[i.name] = np.arange(past, past + seq, dtype=np.int64)[None].repeat(batch, 0)
        elif i.name == "encoder_hidden_states":
            feeds[i.name] = rng.standard_normal((batch, seq, i.shape[-1])).astype(np.float32)
        elif i.name.startswith("past_key_values"):
            shape = [
                batch if d == "batch_size" else past if isinstance(d, str) else d for d in i.shape
            ]
            if ".encoder." in i.name:
                shape[2] = seq
            feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
        elif i.name == "use_cache_branch":
            feeds[i.name] = np.array([past > 0])
        else:
            raise ValueError(f"no feed for {i.name} {i.shape}")
    return feeds


def check_runs(path: Path) -> dict[str, str]:
    """Run the file in ONNX Runtime (past length 0 and 3 where it has a past); say what ran."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    ran = {}
    for past in (0, 3) if any(n.startswith("past_key_values") for n in names) else (0,):
        if "use_cache_branch" in names and past == 0:
            pass  # a merged decoder takes an empty past with the flag off
        outs = session.run(None, _feeds(session, 2, 5, past))
        assert all(np.isfinite(o).all() for o in outs if o.dtype == np.float32), (
            f"{path.name}: non-finite"
        )
        ran[f"past_{past}"] = "ok " + str([list(o.shape) for o in outs[:2]])
    return ran


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="make_models_"))
    try:
        configs = _configs()
        files: list[str] = []
        for name, config in configs.items():
            files += export(name, config, work)
        int8_weights(HERE / "bert.onnx", HERE / "bert_int8w.onnx")
        files.append("bert_int8w.onnx")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    described = {}
    for f in files:
        path = HERE / f
        assert path.stat().st_size <= LIMIT, f"{f}: {path.stat().st_size} bytes > {LIMIT}"
        described[f] = {**describe(path), "onnxruntime_check": check_runs(path)}
        print(f, described[f]["bytes"], described[f]["onnxruntime_check"])

    record = {
        "made_by": "tests/data/sequence/make_models.py",
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "optimum": _dist_version("optimum"),
            "optimum-onnx": _dist_version("optimum-onnx"),
            "accelerate": _dist_version(
                "accelerate"
            ),  # optimum's tied-weight deduplication needs it
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__,
        },
        "seed": SEED,
        "notes": NOTES,
        "configs": {
            name: {
                "class": _MODEL_CLASS[name][0].__name__,
                "task": _MODEL_CLASS[name][1],
                **{
                    k: v
                    for k, v in config.to_diff_dict().items()
                    if k not in ("transformers_version", "architectures")
                },
            }
            for name, config in configs.items()
        },
        "files": described,
    }
    (HERE / "MODELS.json").write_text(json.dumps(record, indent=1) + "\n")
    print("wrote", HERE / "MODELS.json")


def _dist_version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


if __name__ == "__main__":
    main()
