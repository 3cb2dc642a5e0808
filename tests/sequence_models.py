"""Sequence models for the tests: the committed Hugging Face exports, hand-built decoders, a greedy reference.

- `path(name)`: a committed file of tests/data/sequence (made by its make_models.py; MODELS.json says how).
- Hand-built decoders for what exporters vary, each a real attention decoder (token embedding Gather on
  `input_ids`, causal attention over past + new tokens, present = concat(past, new), logits over the
  vocabulary) with seeded random weights: `genai_gqa` (onnxruntime-genai names and com.microsoft
  GroupQueryAttention), `no_position_ids`, `batch_first_past`, `combined_past` (the older `past.N` layout).
- `ort_greedy`: a raw ONNX Runtime greedy loop (prefill with past length 0, then one token per step, each
  present fed back as the next past), the reference for tests of decoding through infer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DATA = Path(__file__).resolve().parent / "data" / "sequence"

# The committed exports (tests/data/sequence/MODELS.json has their configs, versions and I/O).
FILES = (
    "llama",  # LlamaForCausalLM, GQA 4 heads / 2 KV heads, RoPE, with past (runs at past length 0)
    "gpt2",  # GPT2LMHeadModel with past
    "bert",  # BertModel, feature extraction
    "bert_int8w",  # bert with its MatMul weights int8, DequantizeLinear in the graph
    "t5_encoder",  # T5 encoder
    "t5_decoder",  # T5 merged decoder (use_cache_branch): optimum's default; OpenVINO 2026.4 cannot compile it
    "t5_decoder_no_past",  # T5 decoder without past (first step of the two-file form)
    "t5_decoder_with_past",  # T5 decoder with past (later steps of the two-file form)
)
VOCAB = 512  # every committed export's vocabulary
T5_START = 0  # T5's decoder_start_token_id


def path(name: str) -> Path:
    """The committed file `name` ("llama" or "llama.onnx")."""
    stem = name.removesuffix(".onnx")
    if stem not in FILES:
        raise KeyError(f"no committed sequence model {name!r}: one of {', '.join(FILES)}")
    return DATA / f"{stem}.onnx"


# ---------------------------------------------------------------------------------------------------
# Hand-built decoders


@dataclass(frozen=True)
class Dims:
    """A hand-built decoder's sizes."""

    vocab: int = 256
    hidden: int = 64
    heads: int = 4
    kv_heads: int = 2
    layers: int = 2
    max_positions: int = 512
    ffn: int = 128

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


@dataclass
class _Graph:
    """Nodes, initializers and fresh names for one graph under construction."""

    rng: np.random.Generator
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    count: int = 0

    def name(self, base: str) -> str:
        self.count += 1
        return f"/{base}_{self.count}"

    def op(
        self, op_type: str, inputs: Sequence[str], n_out: int = 1, domain: str = "", **attrs
    ) -> Any:
        outs = [self.name(op_type) for _ in range(n_out)]
        self.nodes.append(
            helper.make_node(
                op_type, list(inputs), outs, name=outs[0] + "_node", domain=domain, **attrs
            )
        )
        return outs[0] if n_out == 1 else outs

    def const(self, value: Any, base: str = "const") -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(self, shape: Sequence[int], base: str, scale: float = 0.2) -> str:
        w = (self.rng.standard_normal(shape) * scale).astype(np.float32)
        return self.const(w, base)

    def linear(self, x: str, n_in: int, n_out: int, base: str) -> str:
        return self.op("MatMul", [x, self.weight([n_in, n_out], base, scale=n_in**-0.5)])

    def layer_norm(self, x: str, n: int) -> str:
        scale = self.const(np.ones(n, np.float32), "ln_scale")
        bias = self.const(np.zeros(n, np.float32), "ln_bias")
        return self.op("LayerNormalization", [x, scale, bias], axis=-1, epsilon=1e-5)

    def dim(self, x: str, axis: int) -> str:
        """x.shape[axis] as an int64 [1] tensor."""
        return self.op("Shape", [x], start=axis, end=axis + 1)


def _mlp(g: _Graph, x: str, d: Dims) -> str:
    h = g.layer_norm(x, d.hidden)
    up = g.linear(h, d.hidden, d.ffn, "mlp_up")
    act = g.op("Mul", [up, g.op("Sigmoid", [up])])  # SiLU
    return g.op("Add", [x, g.linear(act, d.ffn, d.hidden, "mlp_down")])


def _attention_bias(g: _Graph, mask: str, ids: str) -> str:
    """float [B, 1, 1, S, T]: 0 where query i (absolute position P + i) may see key j, -1e9 elsewhere.

    T = mask length (past + new), S = new tokens, P = T - S: causal over past + new, and padded keys masked.
    """
    t = g.dim(mask, 1)
    s = g.dim(ids, 1)
    p = g.op("Sub", [t, s])
    zero, one = g.const(np.array(0, np.int64)), g.const(np.array(1, np.int64))
    t0 = g.op("Squeeze", [t])
    kpos = g.op("Range", [zero, t0, one])  # [T]
    qpos = g.op("Range", [g.op("Squeeze", [p]), t0, one])  # [S]
    causal = g.op(
        "LessOrEqual",
        [g.op("Unsqueeze", [kpos, g.const([0])]), g.op("Unsqueeze", [qpos, g.const([1])])],
    )  # [S, T]
    keep = g.op("Cast", [mask], to=TensorProto.BOOL)
    keep = g.op("Unsqueeze", [keep, g.const([1, 2, 3])])  # [B, 1, 1, 1, T]
    allowed = g.op("And", [causal, keep])  # [B, 1, 1, S, T]
    return g.op(
        "Where", [allowed, g.const(np.array(0.0, np.float32)), g.const(np.array(-1e9, np.float32))]
    )


def _positions_from_mask(g: _Graph, mask: str, ids: str) -> str:
    """int64 [B, S]: each new token's position, counted over the mask's ones (left padding skipped)."""
    csum = g.op("CumSum", [mask, g.const(np.array(1, np.int64))])
    pos = g.op(
        "Max", [g.op("Sub", [csum, g.const(np.array(1, np.int64))]), g.const(np.array(0, np.int64))]
    )
    start = g.op("Sub", [g.dim(mask, 1), g.dim(ids, 1)])
    return g.op("Slice", [pos, start, g.dim(mask, 1), g.const([1])])


def _self_attention(
    g: _Graph, x: str, d: Dims, past_k: str, past_v: str, bias: str, layout: str
) -> tuple[str, str, str]:
    """GQA attention of x [B, S, H] over past + new; returns (x + attention, present_k, present_v).

    layout "head": past/present [B, kv_heads, T, head_dim]; "batch": [B, T, kv_heads, head_dim].
    """
    groups = d.heads // d.kv_heads
    h = g.layer_norm(x, d.hidden)
    q = g.linear(h, d.hidden, d.hidden, "q")
    k = g.linear(h, d.hidden, d.kv_heads * d.head_dim, "k")
    v = g.linear(h, d.hidden, d.kv_heads * d.head_dim, "v")
    shape_kv = g.const([0, 0, d.kv_heads, d.head_dim])
    k = g.op("Reshape", [k, shape_kv])  # [B, S, kvh, hd]
    v = g.op("Reshape", [v, shape_kv])
    if layout == "batch":
        present_k = g.op("Concat", [past_k, k], axis=1)  # [B, T, kvh, hd]
        present_v = g.op("Concat", [past_v, v], axis=1)
        kh = g.op("Transpose", [present_k], perm=[0, 2, 1, 3])
        vh = g.op("Transpose", [present_v], perm=[0, 2, 1, 3])
    else:
        present_k = g.op("Concat", [past_k, g.op("Transpose", [k], perm=[0, 2, 1, 3])], axis=2)
        present_v = g.op("Concat", [past_v, g.op("Transpose", [v], perm=[0, 2, 1, 3])], axis=2)
        kh, vh = present_k, present_v  # [B, kvh, T, hd]
    kh = g.op("Unsqueeze", [kh, g.const([2])])  # [B, kvh, 1, T, hd]: broadcast over the group
    vh = g.op("Unsqueeze", [vh, g.const([2])])
    qh = g.op("Reshape", [q, g.const([0, 0, d.kv_heads, groups, d.head_dim])])
    qh = g.op("Transpose", [qh], perm=[0, 2, 3, 1, 4])  # [B, kvh, g, S, hd]
    scores = g.op(
        "MatMul", [qh, g.op("Transpose", [kh], perm=[0, 1, 2, 4, 3])]
    )  # [B, kvh, g, S, T]
    scores = g.op(
        "Add", [g.op("Mul", [scores, g.const(np.array(d.head_dim**-0.5, np.float32))]), bias]
    )
    ctx = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), vh])  # [B, kvh, g, S, hd]
    ctx = g.op(
        "Reshape", [g.op("Transpose", [ctx], perm=[0, 3, 1, 2, 4]), g.const([0, 0, d.hidden])]
    )
    out = g.op("Add", [x, g.linear(ctx, d.hidden, d.hidden, "o")])
    return out, present_k, present_v


def _finish(
    g: _Graph,
    x: str,
    d: Dims,
    inputs: list,
    outputs: list,
    out_names: list[str],
    opsets: dict[str, int],
) -> onnx.ModelProto:
    logits = g.linear(g.layer_norm(x, d.hidden), d.hidden, d.vocab, "lm_head")
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"], name="logits_identity"))
    for src, dst in out_names:
        g.nodes.append(helper.make_node("Identity", [src], [dst], name=dst + "_identity"))
    graph = helper.make_graph(g.nodes, "decoder", inputs, outputs, initializer=g.inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid(dom, v) for dom, v in opsets.items()]
    )
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _io(name: str, dtype: int, dims: Sequence[str | int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, list(dims))


def _standard_decoder(
    layout: str, position_ids: bool, combined: bool, d: Dims, seed: int
) -> onnx.ModelProto:
    """The optimum-shaped decoder (learned positions), with the variations the public builders name."""
    g = _Graph(np.random.default_rng(seed))
    past_dims: list[str | int]
    if layout == "batch":
        past_dims = ["batch_size", "past_sequence_length", d.kv_heads, d.head_dim]
        present_dims = [
            "batch_size",
            "past_sequence_length + sequence_length",
            d.kv_heads,
            d.head_dim,
        ]
    else:
        past_dims = ["batch_size", d.kv_heads, "past_sequence_length", d.head_dim]
        present_dims = [
            "batch_size",
            d.kv_heads,
            "past_sequence_length + sequence_length",
            d.head_dim,
        ]
    inputs = [
        _io("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
        _io(
            "attention_mask",
            TensorProto.INT64,
            ["batch_size", "past_sequence_length + sequence_length"],
        ),
    ]
    if position_ids:
        inputs.append(_io("position_ids", TensorProto.INT64, ["batch_size", "sequence_length"]))
    pos = "position_ids" if position_ids else _positions_from_mask(g, "attention_mask", "input_ids")
    x = g.op("Gather", [g.weight([d.vocab, d.hidden], "embed_tokens", 1.0), "input_ids"])
    x = g.op(
        "Add",
        [x, g.op("Gather", [g.weight([d.max_positions, d.hidden], "embed_positions", 0.5), pos])],
    )
    bias = _attention_bias(g, "attention_mask", "input_ids")
    outputs = [_io("logits", TensorProto.FLOAT, ["batch_size", "sequence_length", d.vocab])]
    renames = []
    for layer in range(d.layers):
        if combined:
            name = f"past.{layer}"
            inputs.append(_io(name, TensorProto.FLOAT, [2, *past_dims]))
            pk = g.op(
                "Squeeze",
                [g.op("Slice", [name, g.const([0]), g.const([1]), g.const([0])]), g.const([0])],
            )
            pv = g.op(
                "Squeeze",
                [g.op("Slice", [name, g.const([1]), g.const([2]), g.const([0])]), g.const([0])],
            )
        else:
            pk, pv = f"past_key_values.{layer}.key", f"past_key_values.{layer}.value"
            inputs += [_io(pk, TensorProto.FLOAT, past_dims), _io(pv, TensorProto.FLOAT, past_dims)]
        x, k, v = _self_attention(g, x, d, pk, pv, bias, layout)
        x = _mlp(g, x, d)
        if combined:
            both = g.op(
                "Concat",
                [g.op("Unsqueeze", [k, g.const([0])]), g.op("Unsqueeze", [v, g.const([0])])],
                axis=0,
            )
            renames.append((both, f"present.{layer}"))
            outputs.append(_io(f"present.{layer}", TensorProto.FLOAT, [2, *present_dims]))
        else:
            for src, kind in ((k, "key"), (v, "value")):
                renames.append((src, f"present.{layer}.{kind}"))
                outputs.append(_io(f"present.{layer}.{kind}", TensorProto.FLOAT, present_dims))
    return _finish(g, x, d, inputs, outputs, renames, {"": 17})


def no_position_ids(dims: Dims = Dims(), seed: int = 0) -> onnx.ModelProto:
    """An optimum-named decoder without a `position_ids` input: positions come from the mask's cumsum."""
    return _standard_decoder("head", position_ids=False, combined=False, d=dims, seed=seed)


def batch_first_past(dims: Dims = Dims(), seed: int = 1) -> onnx.ModelProto:
    """Past/present batch-first: [batch, past_sequence_length, kv_heads, head_dim] (with position_ids)."""
    return _standard_decoder("batch", position_ids=True, combined=False, d=dims, seed=seed)


def combined_past(dims: Dims = Dims(heads=4, kv_heads=4), seed: int = 2) -> onnx.ModelProto:
    """The older layout: one `past.N` [2, batch, heads, past_sequence_length, head_dim] per layer, out `present.N`."""
    return _standard_decoder("head", position_ids=True, combined=True, d=dims, seed=seed)


def genai_gqa(dims: Dims = Dims(), seed: int = 3) -> onnx.ModelProto:
    """onnxruntime-genai's shape: com.microsoft GroupQueryAttention with rotary inside, no position_ids.

    In: input_ids [batch_size, sequence_length], attention_mask [batch_size, total_sequence_length],
    past_key_values.N.key/value [batch_size, kv_heads, past_sequence_length, head_dim].
    Out: logits, present.N.key/value [batch_size, kv_heads, total_sequence_length, head_dim].
    seqlens_k = sum(mask) - 1 and total_sequence_length = mask length, as genai's builder computes them.
    """
    d = dims
    g = _Graph(np.random.default_rng(seed))
    past_dims = ["batch_size", d.kv_heads, "past_sequence_length", d.head_dim]
    present_dims = ["batch_size", d.kv_heads, "total_sequence_length", d.head_dim]
    inputs = [
        _io("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
        _io("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]),
    ]
    outputs = [_io("logits", TensorProto.FLOAT, ["batch_size", "sequence_length", d.vocab])]
    seqlens = g.op(
        "Cast",
        [
            g.op(
                "Sub",
                [
                    g.op("ReduceSum", ["attention_mask", g.const([1])], keepdims=0),
                    g.const(np.array(1, np.int64)),
                ],
            )
        ],
        to=TensorProto.INT32,
    )
    total = g.op("Cast", [g.op("Squeeze", [g.dim("attention_mask", 1)])], to=TensorProto.INT32)
    inv = 1.0 / (10000.0 ** (np.arange(0, d.head_dim, 2, dtype=np.float64) / d.head_dim))
    angles = np.arange(d.max_positions, dtype=np.float64)[:, None] * inv[None]
    cos = g.const(np.cos(angles).astype(np.float32), "cos_cache")
    sin = g.const(np.sin(angles).astype(np.float32), "sin_cache")
    x = g.op("Gather", [g.weight([d.vocab, d.hidden], "embed_tokens", 1.0), "input_ids"])
    renames = []
    for layer in range(d.layers):
        pk, pv = f"past_key_values.{layer}.key", f"past_key_values.{layer}.value"
        inputs += [_io(pk, TensorProto.FLOAT, past_dims), _io(pv, TensorProto.FLOAT, past_dims)]
        h = g.layer_norm(x, d.hidden)
        q = g.linear(h, d.hidden, d.hidden, "q")
        k = g.linear(h, d.hidden, d.kv_heads * d.head_dim, "k")
        v = g.linear(h, d.hidden, d.kv_heads * d.head_dim, "v")
        ctx, present_k, present_v = g.op(
            "GroupQueryAttention",
            [q, k, v, pk, pv, seqlens, total, cos, sin],
            n_out=3,
            domain="com.microsoft",
            num_heads=d.heads,
            kv_num_heads=d.kv_heads,
            do_rotary=1,
            rotary_interleaved=0,
            scale=d.head_dim**-0.5,
        )
        x = g.op("Add", [x, g.linear(ctx, d.hidden, d.hidden, "o")])
        x = _mlp(g, x, d)
        renames += [(present_k, f"present.{layer}.key"), (present_v, f"present.{layer}.value")]
        outputs += [
            _io(f"present.{layer}.key", TensorProto.FLOAT, present_dims),
            _io(f"present.{layer}.value", TensorProto.FLOAT, present_dims),
        ]
    return _finish(g, x, d, inputs, outputs, renames, {"": 17, "com.microsoft": 1})


BUILDERS = {
    "genai_gqa": genai_gqa,
    "no_position_ids": no_position_ids,
    "batch_first_past": batch_first_past,
    "combined_past": combined_past,
}


# ---------------------------------------------------------------------------------------------------
# The reference greedy loop

_PAST = re.compile(r"^past(_key_values)?\.")


def _session(model: Any) -> Any:
    import onnxruntime

    if isinstance(model, onnxruntime.InferenceSession):
        return model
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return onnxruntime.InferenceSession(source, providers=["CPUExecutionProvider"])


def _axis(dims: Sequence[Any], pred) -> int:
    hits = [i for i, dim in enumerate(dims) if isinstance(dim, str) and pred(dim)]
    if len(hits) != 1:
        raise ValueError(f"cannot tell the axis in {list(dims)}")
    return hits[0]


class Decoder:
    """One decoder session in a loop: state (mask, past) for a batch, fed and read by input/output names.

    Past inputs are the names starting `past_key_values.` or `past.`; each one's present is the same
    name with `present` in front. The past-length axis is the dim named `past...`; a past over the
    encoder (`....encoder...`, dims `encoder_sequence_length`) keeps its length; the batch axis is
    `batch...`. A first session (`first`) without past inputs may take the prefill (T5's two-file form).
    """

    def __init__(
        self, model: Any, first: Any = None, encoder_hidden_states=None, encoder_mask=None
    ):
        self.session = _session(model)
        self.first = _session(first) if first is not None else None
        self.encoder_hidden_states = encoder_hidden_states
        self.encoder_mask = encoder_mask
        self.mask: np.ndarray | None = None
        self.past: dict[str, np.ndarray] = {}

    def _past_specs(self, session) -> dict[str, Any]:
        return {i.name: i for i in session.get_inputs() if _PAST.match(i.name)}

    def _empty_past(self, batch: int) -> dict[str, np.ndarray]:
        out = {}
        for name, spec in self._past_specs(self.session).items():
            shape = list(spec.shape)
            shape[_axis(shape, lambda s: s.startswith("batch"))] = batch
            if ".encoder." in name and self.encoder_hidden_states is not None:
                shape[_axis(shape, lambda s: "encoder" in s)] = 0  # unused until the cache branch
            else:
                shape[_axis(shape, lambda s: s.startswith("past"))] = 0
            if any(not isinstance(s, int) for s in shape):
                raise ValueError(f"{name}: cannot make an empty past of {spec.shape}")
            out[name] = np.zeros(shape, np.float32)
        return out

    def run(self, ids: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Feed new ids [B, S] (the mask of the new ids, ones if None); return logits [B, S, V]."""
        batch, new = ids.shape
        new_mask = np.ones((batch, new), np.int64) if mask is None else mask.astype(np.int64)
        self.mask = new_mask if self.mask is None else np.concatenate([self.mask, new_mask], axis=1)
        prefill = not self.past
        session = self.first if (prefill and self.first is not None) else self.session
        past = self._empty_past(batch) if prefill else self.past
        feeds: dict[str, np.ndarray] = {}
        for spec in session.get_inputs():
            name = spec.name
            if name in ("input_ids", "decoder_input_ids"):
                feeds[name] = ids.astype(np.int64)
            elif name == "attention_mask":
                feeds[name] = self.mask if self._past_specs(session) else new_mask
            elif name == "position_ids":
                pos = np.maximum(np.cumsum(self.mask, axis=1) - 1, 0)
                feeds[name] = pos[:, -new:].astype(np.int64)
            elif name == "token_type_ids":
                feeds[name] = np.zeros_like(ids, np.int64)
            elif name == "encoder_hidden_states":
                feeds[name] = self.encoder_hidden_states
            elif name == "encoder_attention_mask":
                feeds[name] = self.encoder_mask
            elif name == "use_cache_branch":
                feeds[name] = np.array([not prefill])
            elif name in past:
                feeds[name] = past[name]
            else:
                raise ValueError(f"no feed for the decoder input {name} {spec.shape}")
        names = [o.name for o in session.get_outputs()]
        values = dict(zip(names, session.run(names, feeds)))
        present = {_PAST.sub("present.", n): n for n in self._past_specs(self.session)}
        # a past over the encoder is computed once: later steps' encoder presents are placeholders
        # (optimum's merged decoder) or absent (its with-past decoder)
        self.past = {
            p: self.past[p] if p in self.past and ".encoder." in p else values[o]
            for o, p in present.items()
        }
        return values["logits"]


def ort_encode(encoder: Any, ids: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Run an encoder (T5's, BERT) on ids [B, S]: its first output."""
    session = _session(encoder)
    mask = np.ones_like(ids, np.int64) if mask is None else mask
    feeds = {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64)}
    if "token_type_ids" in [i.name for i in session.get_inputs()]:
        feeds["token_type_ids"] = np.zeros_like(ids, np.int64)
    return session.run(None, feeds)[0]


def _left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), pad_id, np.int64)
    mask = np.zeros((len(prompts), width), np.int64)
    for row, prompt in enumerate(prompts):
        if len(prompt):
            ids[row, width - len(prompt) :] = prompt
            mask[row, width - len(prompt) :] = 1
    return ids, mask


def ort_greedy(
    model: Any,
    prompt_ids: Sequence[int] | Sequence[Sequence[int]],
    n_tokens: int,
    *,
    pad_id: int = 0,
    first: Any = None,
    encoder: Any = None,
    encoder_ids: Sequence[int] | Sequence[Sequence[int]] | None = None,
    return_logits: bool = False,
) -> Any:
    """Greedy decoding with raw ONNX Runtime: prefill with past length 0, then one token a step.

    model: a decoder (ModelProto, path or InferenceSession). prompt_ids: one prompt (list of ids) or a
    batch (list of lists, left-padded with `pad_id` and masked). Positions count the mask's ones.
    Encoder-decoder: `encoder=` the encoder, `encoder_ids=` its input (one or a batch), prompt_ids the
    decoder start ([T5_START] for T5), `first=` the no-past decoder where the model is the two-file form.
    Returns the new ids (a list, or a list per prompt), with the last step's logits [B, V] per step
    when `return_logits`. A left-padded batch needs a model that honours the mask's zeros: onnxruntime's
    CPU GroupQueryAttention (genai_gqa) does not, and answers such rows differently from each alone.
    """
    single = len(prompt_ids) == 0 or np.ndim(prompt_ids[0]) == 0
    prompts = [list(prompt_ids)] if single else [list(p) for p in prompt_ids]  # type: ignore[arg-type]
    ids, mask = _left_pad(prompts, pad_id)
    hidden = enc_mask = None
    if encoder is not None:
        if encoder_ids is None:
            raise ValueError("an encoder needs encoder_ids")
        enc_single = np.ndim(encoder_ids[0]) == 0
        enc_prompts = [list(encoder_ids)] if enc_single else [list(p) for p in encoder_ids]  # type: ignore[arg-type]
        enc_ids, enc_mask = _left_pad(enc_prompts, pad_id)
        hidden = ort_encode(encoder, enc_ids, enc_mask)
    loop = Decoder(model, first=first, encoder_hidden_states=hidden, encoder_mask=enc_mask)
    out: list[list[int]] = [[] for _ in prompts]
    steps = []
    logits = loop.run(ids, mask)[:, -1]
    for _ in range(n_tokens):
        steps.append(logits)
        nxt = logits.argmax(-1)
        for row, token in enumerate(nxt):
            out[row].append(int(token))
        if len(out[0]) == n_tokens:
            break
        logits = loop.run(nxt[:, None].astype(np.int64))[:, -1]
    result = out[0] if single else out
    return (result, steps) if return_logits else result


def ort_full_logits(model: Any, ids: Sequence[int], **kwargs: Any) -> np.ndarray:
    """The last position's logits [V] of one prefill over all of `ids` (past length 0): full recomputation."""
    _, steps = ort_greedy(model, ids, 1, return_logits=True, **kwargs)
    return steps[0][0]
