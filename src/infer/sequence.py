"""What a sequence model's inputs and outputs are, read once from its graph.

Token ids (and how many the vocabulary holds), attention masks, position ids, token types,
encoder states, and the past/present pairs of a KV cache: exporters name them alike
(Hugging Face optimum and transformers, onnxruntime-genai, Whisper and T5 exports), and a
present is its past grown along one axis. The feeds, the race, batching and the decoder ask
`read(model)` instead of matching names themselves, and size dimensions that exporters name by
expressions ("past_sequence_length + sequence_length") with `evaluate`.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import re
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from . import _onnx
from .tensors import TensorSpec

SEQUENCE = 128
"""The tokens (or frames) a representative run of a sequence model takes: an encoder's input
length, a decoder's prompt, and the context a decode step follows."""

# -- dimensions named by expressions ------------------------------------------------------------

_BINARY: dict[type, Callable[[int, int], int]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.FloorDiv: lambda a, b: a // b,
    ast.Div: lambda a, b: a // b,  # sizes are whole: exporters write "/" for a floor division
    ast.Mod: lambda a, b: a % b,
}
_CALLS: dict[str, Callable[..., int]] = {
    "max": max,
    "min": min,
    "floor": int,
    "ceil": int,
    "ceiling": int,
    "int": int,
}


@functools.lru_cache(maxsize=1024)
def _parse(dim: str) -> ast.expr | None:
    """The expression a dimension's name holds, or None for a plain name (or no expression)."""
    if not dim or dim.isidentifier():
        return None
    try:
        tree = ast.parse(dim.strip(), mode="eval").body
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and node.func.id.lower() in _CALLS):
                return None
        elif isinstance(node, ast.BinOp):
            if type(node.op) not in _BINARY:
                return None
        elif isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, ast.USub):
                return None
        elif isinstance(node, ast.Constant):
            if not isinstance(node.value, int) or isinstance(node.value, bool):
                return None
        elif not isinstance(node, (ast.Name, ast.Load, ast.operator, ast.unaryop)):
            return None
    return tree if not isinstance(tree, ast.Name) else None


def is_expression(dim: object) -> bool:
    """Whether a dimension is named by an expression of other names ("s0 + 1")."""
    return isinstance(dim, str) and _parse(dim) is not None


def symbols(dim: str) -> frozenset[str]:
    """The names an expression uses ({dim} for a plain name)."""
    tree = _parse(dim)
    if tree is None:
        return frozenset({dim}) if dim else frozenset()
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call)}  # type: ignore[attr-defined]
    return frozenset(n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id not in calls)


def evaluate(dim: str, sizes: Mapping[str, int]) -> int | None:
    """The size a dimension takes given the sizes of the names it uses; None where one is
    unknown or the expression cannot be computed."""
    tree = _parse(dim)
    if tree is None:
        return sizes.get(dim)

    def ev(node: ast.expr) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name):
            return sizes[node.id]
        if isinstance(node, ast.UnaryOp):
            return -ev(node.operand)
        if isinstance(node, ast.BinOp):
            return _BINARY[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            return _CALLS[node.func.id.lower()](*(ev(a) for a in node.args))
        raise KeyError(ast.dump(node))

    try:
        return ev(tree)
    except (KeyError, ZeroDivisionError, TypeError, ValueError):
        return None


def solve(dim: str, size: int, sizes: Mapping[str, int]) -> tuple[str, int] | None:
    """The one unknown name of `dim` and the size that makes `dim` equal `size`, where the
    expression is linear in it ("past + sequence" = 10 with sequence 4 -> ("past", 6))."""
    unknown = [s for s in symbols(dim) if s not in sizes]
    if len(unknown) != 1:
        return None
    name = unknown[0]
    at0 = evaluate(dim, {**sizes, name: 0})
    at1 = evaluate(dim, {**sizes, name: 1})
    if at0 is None or at1 is None or at1 == at0:
        return None
    value, rest = divmod(size - at0, at1 - at0)
    if rest or value < 0 or evaluate(dim, {**sizes, name: value}) != size:
        return None
    return name, value


# -- roles ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KVPair:
    """A past input of a KV cache and the present output that is its next value."""

    past: str
    present: str | None
    layer: int
    axis: int
    """The sequence axis the cache grows along (2 in [batch, heads, past, head_dim])."""
    shared: bool = False
    """Past and present declared with one fixed length: one buffer of the maximum length serves
    both (onnxruntime-genai's GroupQueryAttention models)."""
    encoder: bool = False
    """Past and present of one length by name, not grown by the new tokens: a cache over the
    encoder's sequence (a seq2seq decoder's cross-attention), computed once."""


@dataclass(frozen=True)
class Roles:
    """What each input and output of a sequence model is for; empty for other models."""

    ids: str | None = None
    vocab: int | None = None
    """Token ids are below this: the rows of the embedding table they index, else the size of
    the logits' last dimension."""
    mask: str | None = None
    positions: str | None = None
    token_types: str | None = None
    encoder_states: str | None = None
    encoder_mask: str | None = None
    cache_branch: str | None = None
    """optimum's merged decoders: a boolean input choosing the branch that takes a past."""
    kv: tuple[KVPair, ...] = ()
    logits: str | None = None
    batch: str | None = None
    """The names of the batch dimension, of the new tokens, of the past's length, of a plain
    name for past + new tokens (onnxruntime-genai's total_sequence_length), and of the
    encoder's sequence."""
    sequence: str | None = None
    past: str | None = None
    total: str | None = None
    encoder_sequence: str | None = None
    bounds: Mapping[str, int] = field(default_factory=dict)
    """Integer input -> rows of the table it indexes (an embedding Gather on the input): valid
    values are [-n, n - 1], the range ONNX's Gather defines."""
    pad_id: int = 0
    max_positions: int | None = None
    """The rows of a position table the graph indexes with positions it makes itself (0, 1,
    ... over the ids' length: a Range, or a Slice of a constant 0, 1, 2, ...): the most tokens
    one run takes. None where the graph has none (positions as an input: see `bounds`)."""

    @property
    def is_sequence(self) -> bool:
        """Whether the model takes tokens (or an encoder's states)."""
        return self.ids is not None or self.encoder_states is not None

    @property
    def is_decoder(self) -> bool:
        """Whether the model carries a KV cache (past inputs, present outputs)."""
        return bool(self.kv)

    def claimed(self) -> frozenset[str]:
        """The inputs that have a role."""
        names = (
            self.ids,
            self.mask,
            self.positions,
            self.token_types,
            self.encoder_states,
            self.encoder_mask,
            self.cache_branch,
        )
        return frozenset(n for n in names if n) | {p.past for p in self.kv}

    def __str__(self) -> str:
        parts = [
            f"{role} {name!r}"
            for role, name in (
                ("ids", self.ids),
                ("mask", self.mask),
                ("positions", self.positions),
                ("token types", self.token_types),
                ("encoder states", self.encoder_states),
                ("encoder mask", self.encoder_mask),
                ("cache branch", self.cache_branch),
                ("logits", self.logits),
            )
            if name
        ]
        if self.vocab:
            parts.append(f"vocabulary {self.vocab}")
        if self.kv:
            parts.append(f"{len(self.kv)} past/present pairs (axis {self.kv[0].axis})")
        return ", ".join(parts) or "no sequence roles"


NONE = Roles()


# Names exporters give, matched on the name's words (split at anything not a letter or digit).
_IDS = ("input_ids", "decoder_input_ids", "ids", "tokens", "token_ids", "input")
_MASKS = ("attention_mask", "decoder_attention_mask", "mask", "input_mask", "attn_mask")
_POSITIONS = ("position_ids", "positions", "pos_ids", "decoder_position_ids", "cache_position")
_TYPES = ("token_type_ids", "segment_ids", "input_type_ids", "type_ids")
_ENCODER = ("encoder_hidden_states", "encoder_outputs", "encoder_output", "audio_features")
_ENCODER_MASKS = ("encoder_attention_mask",)
_CACHE_BRANCH = ("use_cache_branch", "use_cache")
_LOGITS = ("logits", "lm_logits", "output_logits")
_PAST = re.compile(r"past_key_values?|past|cache")
_PRESENT = re.compile(r"present_key_values?|present|cache_out|new_cache")

_CACHE: weakref.WeakKeyDictionary[Any, Roles] = weakref.WeakKeyDictionary()


def read(model: Any) -> Roles:
    """The roles of a model's inputs and outputs: an `infer.model.Model` (ONNX: from its
    graph; other formats: from the inputs and outputs it declares, when given as specs) or an
    `onnx.ModelProto`. Cached per model object."""
    try:
        return _CACHE[model]
    except (KeyError, TypeError):
        pass
    if isinstance(model, onnx.ModelProto):
        roles = from_graph(model.graph, model.metadata_props)
    else:
        from .model import ModelFormat

        if model.format is ModelFormat.ONNX:
            skeleton = model._skeleton
            roles = from_graph(skeleton.graph, skeleton.metadata_props)
        else:
            roles = NONE
    with contextlib.suppress(TypeError):  # a ModelProto takes no weak reference
        _CACHE[model] = roles
    return roles


def from_graph(graph: onnx.GraphProto, metadata: Any = ()) -> Roles:
    """Roles read from an ONNX graph (and the model's metadata, for a pad id)."""
    from .tensors import graph_inputs, graph_outputs

    inputs, outputs = graph_inputs(graph), graph_outputs(graph)
    bounds = _gather_bounds(graph, {s.name for s in inputs if _is_int(s)})
    roles = from_specs(inputs, outputs, bounds=bounds)
    if roles.ids is not None:
        roles = _replace(roles, max_positions=_position_rows(graph))
    meta = {p.key: p.value for p in metadata}
    pad = meta.get("pad_token_id", "").strip()
    if pad.isdigit():
        roles = _replace(roles, pad_id=int(pad))
    return roles


def from_specs(
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    *,
    bounds: Mapping[str, int] | None = None,
) -> Roles:
    """Roles from declared inputs and outputs alone (names and shapes); `bounds` from the
    graph where it is known."""
    bounds = dict(bounds or {})
    ints = [s for s in inputs if _is_int(s)]
    floats = [s for s in inputs if s.shape is not None and np.dtype(s.dtype).kind == "f"]

    ids = _named(ints, _IDS, rank=(1, 2))
    if ids is None and bounds:
        # Not named as ids: the 2-D integer input that indexes the largest table.
        indexing = [s for s in ints if s.name in bounds and s.shape and len(s.shape) == 2]
        if indexing:
            ids = max(indexing, key=lambda s: bounds[s.name])
    mask = _named([s for s in inputs if s is not ids], _MASKS, rank=(2, 4))
    positions = _named(ints, _POSITIONS, rank=(1, 2))
    token_types = _named(ints, _TYPES, rank=(1, 2))
    encoder_states = _named(floats, _ENCODER, rank=(3,))
    encoder_mask = _named(inputs, _ENCODER_MASKS, rank=(2,))
    if encoder_mask is not None and mask is encoder_mask:
        mask = None
    cache_branch = _named(
        [s for s in inputs if np.dtype(s.dtype) == np.bool_], _CACHE_BRANCH, rank=(0, 1)
    )
    kv = _pairs(floats, outputs)
    logits = _named(
        [o for o in outputs if o.shape is not None and np.dtype(o.dtype).kind == "f"],
        _LOGITS,
        rank=(2, 3),
    )
    if logits is None and kv:
        rest = [
            o
            for o in outputs
            if o.name not in {p.present for p in kv} and o.shape and len(o.shape) == 3
        ]
        logits = rest[0] if len(rest) == 1 else None

    vocab = bounds.get(ids.name) if ids is not None else None
    if vocab is None and logits is not None and logits.shape and isinstance(logits.shape[-1], int):
        vocab = logits.shape[-1]

    def dim(spec: TensorSpec | None, axis: int) -> str | None:
        if spec is None or spec.shape is None or len(spec.shape) <= axis:
            return None
        d = spec.shape[axis]
        return d if isinstance(d, str) and not is_expression(d) else None

    sequence = dim(ids, -1) if ids is not None and ids.shape and len(ids.shape) == 2 else None
    past = None
    if kv:
        spec = next(s for s in floats if s.name == kv[0].past)
        past = dim(spec, kv[0].axis)
    total = None
    if mask is not None and mask.shape is not None and len(mask.shape) == 2:
        last = mask.shape[-1]
        if isinstance(last, str) and not is_expression(last) and last not in (sequence, past):
            total = last if kv else None
    return Roles(
        ids=ids.name if ids else None,
        vocab=vocab,
        mask=mask.name if mask else None,
        positions=positions.name if positions else None,
        token_types=token_types.name if token_types else None,
        encoder_states=encoder_states.name if encoder_states else None,
        encoder_mask=encoder_mask.name if encoder_mask else None,
        cache_branch=cache_branch.name if cache_branch else None,
        kv=kv,
        logits=logits.name if logits else None,
        batch=dim(ids, 0) or dim(encoder_states, 0),
        sequence=sequence,
        past=past,
        total=total,
        encoder_sequence=dim(encoder_states, 1),
        bounds=bounds,
    )


def _replace(roles: Roles, **changes: Any) -> Roles:
    from dataclasses import replace

    return replace(roles, **changes)


def _is_int(spec: TensorSpec) -> bool:
    return spec.kind == "tensor" and np.dtype(spec.dtype).kind in "iu"


def _words(name: str) -> str:
    return "_".join(w for w in re.split(r"[^a-z0-9]+", name.lower()) if w)


def _named(
    specs: Sequence[TensorSpec], names: Sequence[str], *, rank: tuple[int, ...]
) -> TensorSpec | None:
    """The spec whose name is one of `names` (the first of `names` that matches wins), of an
    allowed rank (or of unknown rank)."""
    by_words = {_words(s.name): s for s in specs}
    for name in names:
        spec = by_words.get(name)
        if spec is not None and (spec.shape is None or len(spec.shape) in rank):
            return spec
    return None


def _pairs(pasts: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> tuple[KVPair, ...]:
    """Past inputs paired with present outputs: by name (past -> present), then by shape (a
    present is its past grown along one axis), in order."""
    candidates = [s for s in pasts if s.shape is not None and len(s.shape) >= 3]
    outs = [o for o in outputs if o.shape is not None]
    by_key = {_PRESENT.sub("present", _words(o.name)): o for o in outs if _PRESENT.search(o.name)}
    pairs: list[KVPair] = []
    used: set[str] = set()
    unpaired: list[TensorSpec] = []
    for spec in candidates:
        if not _PAST.search(spec.name.lower()) or "branch" in spec.name.lower():
            unpaired.append(spec)
            continue
        present = by_key.get(_PAST.sub("present", _words(spec.name)))
        axis = _grown_axis(spec, present) if present is not None else None
        if present is None or axis is None:
            unpaired.append(spec)
            continue
        pairs.append(_pair(spec, present, axis, len(pairs)))
        used.add(present.name)
    for spec in unpaired:
        for o in outs:
            if o.name in used:
                continue
            axis = _grown_axis(spec, o, strict=True)
            if axis is not None:
                pairs.append(_pair(spec, o, axis, len(pairs)))
                used.add(o.name)
                break
    return tuple(sorted(pairs, key=lambda p: (p.layer, _words(p.past))))


def _pair(past: TensorSpec, present: TensorSpec, axis: int, order: int) -> KVPair:
    numbers = re.findall(r"\d+", past.name)
    layer = int(numbers[0]) if numbers else order
    length = past.shape[axis] if past.shape == present.shape and past.shape else None
    return KVPair(
        past.name,
        present.name,
        layer,
        axis,
        shared=isinstance(length, int),
        encoder=isinstance(length, str),
    )


def _grown_axis(past: TensorSpec, present: TensorSpec, *, strict: bool = False) -> int | None:
    """The axis along which `present` is `past` grown; for one buffer shared by both (same
    declared shape), its length axis. `strict`: only a growth written as an expression of the
    past's length counts (no names to go by)."""
    a, b = past.shape, present.shape
    if (
        a is None
        or b is None
        or len(a) != len(b)
        or np.dtype(past.dtype) != np.dtype(present.dtype)
    ):
        return None
    differ = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
    if len(differ) == 1:
        i = differ[0]
        x, y = a[i], b[i]
        if isinstance(x, str) and isinstance(y, str):
            if x in symbols(y) and is_expression(y):
                return i
            return None if strict else i
        return None if strict or (isinstance(x, int) and isinstance(y, int) and y < x) else i
    if not differ and not strict:
        # One buffer for both: its length is the axis named like a length, else the one
        # before the last (the [batch, heads, length, head_dim] layout).
        for i, d in enumerate(a):
            if isinstance(d, str) and re.search(r"seq|len|past|total|context", d.lower()):
                return i
        return len(a) - 2
    return None


_PASS_THROUGH = frozenset(
    {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Expand"}
)


def _gather_bounds(graph: onnx.GraphProto, names: set[str]) -> dict[str, int]:
    """Integer inputs that index an embedding table directly (a Gather on axis 0 whose data is
    a constant, or a constant dequantized or cast): input -> the table's rows."""
    if not names:
        return {}
    consts = {t.name: tuple(t.dims) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value":
                    consts[node.output[0]] = tuple(attr.t.dims)
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)

    def table_rows(value: str) -> int | None:
        for _ in range(4):  # through DequantizeLinear / Cast / Transpose-free chains
            if value in consts:
                dims = consts[value]
                return int(dims[0]) if dims else None
            node = producers.get(value)
            if node is None or node.op_type not in ("DequantizeLinear", "Cast", "Identity"):
                return None
            value = node.input[0]
        return None

    out: dict[str, int] = {}
    for name in names:
        frontier, seen = [name], set()
        while frontier:
            value = frontier.pop()
            if value in seen:
                continue
            seen.add(value)
            for node in consumers.get(value, ()):
                if node.op_type in _PASS_THROUGH and node.input[0] == value:
                    frontier.extend(node.output)
                elif (
                    node.op_type == "Gather"
                    and len(node.input) > 1
                    and node.input[1] == value
                    and int(_onnx.attribute(node, "axis", 0)) == 0
                ):
                    rows = table_rows(node.input[0])
                    if rows is not None:
                        out[name] = min(rows, out.get(name, rows))
    return out


def _position_rows(graph: onnx.GraphProto) -> int | None:
    """The rows of a table that an axis-0 Gather indexes with 0, 1, ... it makes itself (a
    Range from 0 by 1, or a Slice from 0 of a constant 0, 1, 2, ...: BERT's and most encoders'
    position embeddings), capped by that constant's length; the smallest such, or None."""
    consts = _onnx.constants(graph)
    producers = {o: n for n in graph.node for o in n.output}

    def small(name: str, most: int) -> np.ndarray | None:  # an inline constant's values
        tensor = consts.get(name)
        if (
            tensor is None
            or tensor.data_location == onnx.TensorProto.EXTERNAL
            or int(np.prod(tensor.dims)) > most
            or np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).kind not in "iu"
        ):
            return None
        return onnx.numpy_helper.to_array(tensor)

    def scalar(name: str) -> int | None:
        value = small(name, 1)
        return int(value.reshape(())) if value is not None and value.size == 1 else None

    def counts(value: str) -> float | None:
        """How far 0, 1, ... `value` holds can go (inf: a Range); None: not such a count."""
        for _ in range(8):
            node = producers.get(value)
            if node is None:
                return None
            if node.op_type in _PASS_THROUGH and node.input:
                value = node.input[0]
                continue
            if node.op_type == "Range" and len(node.input) == 3:
                ok = scalar(node.input[0]) == 0 and scalar(node.input[2]) == 1
                return float("inf") if ok else None
            if node.op_type == "Slice" and len(node.input) >= 3:
                data = small(node.input[0], 1 << 20)
                steps = node.input[4] if len(node.input) > 4 and node.input[4] else None
                if (
                    data is not None
                    and data.size
                    and np.array_equal(data.reshape(-1), np.arange(data.size))
                    and scalar(node.input[1]) == 0
                    and (steps is None or scalar(steps) == 1)
                ):
                    return float(data.size)
            return None
        return None

    found: int | None = None
    for node in graph.node:
        if (
            node.op_type != "Gather"
            or len(node.input) < 2
            or int(_onnx.attribute(node, "axis", 0)) != 0
            or node.input[0] not in consts
            or not consts[node.input[0]].dims
        ):
            continue
        reach = counts(node.input[1])
        if reach is not None:
            rows = int(min(consts[node.input[0]].dims[0], reach))
            found = rows if found is None else min(found, rows)
    return found


# -- phases and feeds -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Phase:
    """One kind of run of a sequence model: a decoder's prompt (prefill) or one new token
    after a past (decode), or an encoder's pass over its input (encode)."""

    name: str
    batch: int = 1
    sequence: int = SEQUENCE
    past: int = 0

    def sizes(self, roles: Roles) -> dict[str, int]:
        """Dimension name -> size for the names the roles know."""
        out: dict[str, int] = {}
        for name, size in (
            (roles.batch, self.batch),
            (roles.sequence, self.sequence),
            (roles.past, self.past),
            (roles.total, self.past + self.sequence),
            (roles.encoder_sequence, SEQUENCE),
        ):
            if name and name not in out:
                out[name] = size
        return out

    def __str__(self) -> str:
        if self.name == "decode":
            what = f"{self.sequence} token{'s' if self.sequence != 1 else ''} after {self.past}"
        elif self.name == "prefill":
            what = f"a {self.sequence}-token prompt" + (f" after {self.past}" if self.past else "")
        else:
            what = f"{self.sequence} tokens"
        return f"{self.name}: {what} (batch {self.batch})"


def phases(
    roles: Roles, *, batch: int = 1, sequence: int = SEQUENCE, context: int = SEQUENCE
) -> list[Phase]:
    """The runs a model of this kind spends its life on, the one that matters most first: a
    decoder's decode step (one token after `context`) then its prefill (a `sequence`-token
    prompt); an encoder's pass over `sequence` tokens; [] for other models. Both stay
    within a table of positions the model holds."""
    limit = roles.bounds.get(roles.positions or "", roles.max_positions)
    if limit is not None:  # a table of positions: the context and prompt must fit in it
        sequence = max(1, min(sequence, limit))
        context = max(0, min(context, limit - 1))
    if roles.is_decoder:
        return [
            Phase("decode", batch, 1, context),
            Phase("prefill", batch, sequence, 0),
        ]
    if roles.is_sequence:
        return [Phase("encode", batch, sequence, 0)]
    return []


def feeds(
    roles: Roles,
    specs: Sequence[TensorSpec],
    shapes: Mapping[str, Sequence[int]],
    rng: np.random.Generator,
    *,
    phase: Phase | None = None,
) -> dict[str, np.ndarray]:
    """Values a sequence model sees, for the inputs that have a role, at `shapes`: ids within
    the vocabulary (never the pad id), masks of ones (an encoder's rows after the first end in
    padding where batch > 1), positions after the past, token types 0, past states and encoder
    states standard normal, the cache branch on where there is a past."""
    by_name = {s.name: s for s in specs}
    out: dict[str, np.ndarray] = {}
    past_len = _past_length(roles, shapes, phase)

    def make(name: str | None, build: Callable[[TensorSpec, tuple[int, ...]], np.ndarray]) -> None:
        if name and name in by_name and name in shapes:
            spec = by_name[name]
            out[name] = np.asarray(build(spec, tuple(shapes[name]))).astype(spec.dtype, copy=False)

    def ids(spec: TensorSpec, shape: tuple[int, ...]) -> np.ndarray:
        high = roles.vocab or 2
        values = rng.integers(0, max(high - 1, 1), shape)
        return np.where(values >= roles.pad_id, values + 1, values) if high > 1 else values

    def mask(spec: TensorSpec, shape: tuple[int, ...]) -> np.ndarray:
        m = np.ones(shape, dtype=np.int64)
        if not roles.is_decoder and len(shape) == 2 and shape[0] > 1 and shape[1] > 1:
            for row in range(1, shape[0]):  # a padded tail, shorter row by row, never empty
                keep = max(1, shape[1] - (row * shape[1]) // (2 * shape[0]))
                m[row, keep:] = 0
        return m

    def positions(spec: TensorSpec, shape: tuple[int, ...]) -> np.ndarray:
        steps = np.arange(past_len, past_len + (shape[-1] if shape else 1), dtype=np.int64)
        return np.broadcast_to(steps, shape) if shape else steps[:1].reshape(())

    def normal(spec: TensorSpec, shape: tuple[int, ...]) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32)

    make(roles.ids, ids)
    make(roles.mask, mask)
    make(roles.encoder_mask, lambda s, shape: np.ones(shape, dtype=np.int64))
    make(roles.positions, positions)
    make(roles.token_types, lambda s, shape: np.zeros(shape, dtype=np.int64))
    make(roles.encoder_states, normal)
    for pair in roles.kv:
        make(pair.past, normal)
    make(roles.cache_branch, lambda s, shape: np.full(shape, past_len > 0, dtype=np.bool_))
    return out


def _past_length(roles: Roles, shapes: Mapping[str, Sequence[int]], phase: Phase | None) -> int:
    if phase is not None:
        return phase.past
    for pair in roles.kv:
        shape = shapes.get(pair.past)
        if shape is not None and len(shape) > pair.axis and not pair.encoder:
            return 0 if pair.shared else int(shape[pair.axis])
    return 0
