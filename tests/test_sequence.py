"""infer.sequence: roles read from a graph, dimensions named by expressions, realistic feeds."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from infer import sequence
from infer.feeds import random_feeds, representative_shapes, resolve_shapes
from infer.model import Model
from tests import encoder_models, models


def _io_only(inputs, outputs, nodes=(), initializers=()):
    """A graph whose inputs and outputs are declared as an exporter names them (roles are read
    from the declarations; nothing runs it)."""
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        list(nodes),
        "g",
        [vi(n, t, s) for n, t, s in inputs],
        [vi(n, t, s) for n, t, s in outputs],
        initializer=list(initializers),
    )
    return helper.make_model(graph)


F, I64, B = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL


# -- expressions ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dim, sizes, want",
    [
        (
            "past_sequence_length + sequence_length",
            {"past_sequence_length": 5, "sequence_length": 3},
            8,
        ),
        ("past_sequence_length + 1", {"past_sequence_length": 7}, 8),
        ("s0 + s1", {"s0": 2, "s1": 9}, 11),
        ("2*s1", {"s1": 4}, 8),
        ("Max(s0, s1)", {"s0": 2, "s1": 9}, 9),
        ("batch_size * num_heads", {"batch_size": 2, "num_heads": 4}, 8),
        ("(s0 - 1)//2 + 1", {"s0": 9}, 5),
        ("sequence_length", {"sequence_length": 4}, 4),
        ("past + sequence", {"past": 1}, None),  # a name unknown
    ],
)
def test_evaluate(dim, sizes, want):
    assert sequence.evaluate(dim, sizes) == want


def test_symbols_and_expressions():
    assert sequence.symbols("past_sequence_length + sequence_length") == {
        "past_sequence_length",
        "sequence_length",
    }
    assert sequence.symbols("Max(s0, s1)") == {"s0", "s1"}
    assert sequence.is_expression("s0 + 1")
    assert not sequence.is_expression("sequence_length")
    assert not sequence.is_expression("unk__123")
    assert not sequence.is_expression("import os")  # not an expression of sizes


def test_solve_finds_the_one_unknown():
    assert sequence.solve("past + sequence", 10, {"sequence": 4}) == ("past", 6)
    assert sequence.solve("past + 1", 1, {}) == ("past", 0)
    assert sequence.solve("past + sequence", 3, {"sequence": 4}) is None  # negative
    assert sequence.solve("a + b", 3, {}) is None  # two unknowns


# -- roles ---------------------------------------------------------------------------------------


def test_optimum_decoder_roles():
    roles = sequence.read(models.tiny_decoder(vocab=50, positions=256))
    assert roles.ids == "input_ids"
    assert roles.mask == "attention_mask"
    assert roles.positions == "position_ids"
    assert roles.logits == "logits"
    assert roles.vocab == 50
    assert roles.bounds == {"input_ids": 50, "position_ids": 256}
    assert [(p.past, p.present, p.layer, p.axis) for p in roles.kv] == [
        ("past_key_values.0.key", "present.0.key", 0, 2),
        ("past_key_values.0.value", "present.0.value", 0, 2),
    ]
    assert (roles.batch, roles.sequence, roles.past) == (
        "batch_size",
        "sequence_length",
        "past_sequence_length",
    )
    assert roles.is_decoder and roles.is_sequence
    assert roles.claimed() == {
        "input_ids",
        "attention_mask",
        "position_ids",
        "past_key_values.0.key",
        "past_key_values.0.value",
    }


def test_genai_names_total_sequence_length():
    kv_past = ["batch_size", 2, "past_sequence_length", 16]
    kv_total = ["batch_size", 2, "total_sequence_length", 16]
    model = _io_only(
        [
            ("input_ids", TensorProto.INT32, ["batch_size", "sequence_length"]),
            ("attention_mask", TensorProto.INT32, ["batch_size", "total_sequence_length"]),
            *[
                (f"past_key_values.{i}.{kv}", F, kv_past)
                for i in range(2)
                for kv in ("key", "value")
            ],
        ],
        [
            ("logits", F, ["batch_size", "sequence_length", 32000]),
            *[(f"present.{i}.{kv}", F, kv_total) for i in range(2) for kv in ("key", "value")],
        ],
    )
    roles = sequence.read(model)
    assert roles.total == "total_sequence_length"
    assert roles.vocab == 32000  # no embedding table in the graph: the logits say
    assert [p.layer for p in roles.kv] == [0, 0, 1, 1]
    assert all(p.axis == 2 and not p.shared and not p.encoder for p in roles.kv)
    decode = sequence.phases(roles)[0]
    assert decode.sizes(roles)["total_sequence_length"] == decode.past + 1


def test_batch_first_and_combined_past_layouts():
    batch_first = _io_only(
        [
            ("input_ids", I64, ["b", "s"]),
            ("past_key_0", F, ["b", "past", 4, 8]),
            ("past_value_0", F, ["b", "past", 4, 8]),
        ],
        [
            ("logits", F, ["b", "s", 10]),
            ("present_key_0", F, ["b", "past + s", 4, 8]),
            ("present_value_0", F, ["b", "past + s", 4, 8]),
        ],
    )
    roles = sequence.read(batch_first)
    assert [(p.past, p.present, p.axis) for p in roles.kv] == [
        ("past_key_0", "present_key_0", 1),
        ("past_value_0", "present_value_0", 1),
    ]
    combined = _io_only(
        [("input_ids", I64, ["b", "s"]), ("past.0", F, [2, "b", 4, "past", 8])],
        [("logits", F, ["b", "s", 10]), ("present.0", F, [2, "b", 4, "past + s", 8])],
    )
    (pair,) = sequence.read(combined).kv
    assert (pair.past, pair.present, pair.axis) == ("past.0", "present.0", 3)


def test_unnamed_cache_paired_by_shape_alone():
    model = _io_only(
        [("tokens", I64, ["b", "s"]), ("state_in", F, ["b", 4, "n", 8])],
        [("scores", F, ["b", "s", 10]), ("state_out", F, ["b", 4, "n + s", 8])],
    )
    (pair,) = sequence.read(model).kv
    assert (pair.past, pair.present, pair.axis) == ("state_in", "state_out", 2)


def test_a_recurrent_state_is_not_a_kv_cache():
    # silero-vad's shape: a state that keeps its size is carried, not grown.
    model = _io_only(
        [("input", F, ["batch", "t"]), ("state", F, [2, "batch", 128]), ("sr", I64, [])],
        [("output", F, ["batch", 1]), ("stateN", F, [2, "batch", 128])],
    )
    roles = sequence.read(model)
    assert not roles.is_decoder and roles.kv == ()


def test_seq2seq_decoder_roles():
    dec = ["batch_size", 4, "past_decoder_sequence_length", 8]
    enc = ["batch_size", 4, "encoder_sequence_length_out", 8]
    model = _io_only(
        [
            ("input_ids", I64, ["batch_size", "decoder_sequence_length"]),
            ("encoder_hidden_states", F, ["batch_size", "encoder_sequence_length", 32]),
            ("encoder_attention_mask", I64, ["batch_size", "encoder_sequence_length"]),
            ("past_key_values.0.decoder.key", F, dec),
            ("past_key_values.0.encoder.key", F, enc),
            ("use_cache_branch", B, [1]),
        ],
        [
            ("logits", F, ["batch_size", "decoder_sequence_length", 100]),
            (
                "present.0.decoder.key",
                F,
                ["batch_size", 4, "past_decoder_sequence_length + decoder_sequence_length", 8],
            ),
            ("present.0.encoder.key", F, ["batch_size", 4, "encoder_sequence_length_out", 8]),
        ],
    )
    roles = sequence.read(model)
    assert roles.encoder_states == "encoder_hidden_states"
    assert roles.encoder_mask == "encoder_attention_mask"
    assert roles.mask is None
    assert roles.cache_branch == "use_cache_branch"
    assert roles.encoder_sequence == "encoder_sequence_length"
    pairs = {p.past: p for p in roles.kv}
    decoder, encoder = (
        pairs["past_key_values.0.decoder.key"],
        pairs["past_key_values.0.encoder.key"],
    )
    assert (decoder.present, decoder.axis, decoder.encoder) == ("present.0.decoder.key", 2, False)
    assert (encoder.present, encoder.axis, encoder.encoder) == ("present.0.encoder.key", 2, True)
    assert not encoder.shared  # a length by name: not one buffer of a fixed length


def test_encoder_roles_and_no_roles():
    roles = sequence.read(encoder_models.encoder(vocab=60, token_types=True, max_positions=512))
    assert (roles.ids, roles.mask, roles.token_types) == (
        "input_ids",
        "attention_mask",
        "token_type_ids",
    )
    assert roles.bounds == {"input_ids": 60, "token_type_ids": 2}
    assert roles.is_sequence and not roles.is_decoder
    assert [p.name for p in sequence.phases(roles)] == ["encode"]
    plain = sequence.read(models.relu())
    assert not plain.is_sequence and sequence.phases(plain) == []


def test_pad_id_from_metadata():
    model = encoder_models.encoder(vocab=60, token_types=True, max_positions=512)
    helper.set_model_props(model, {"pad_token_id": "3"})
    assert sequence.read(model).pad_id == 3


def test_quantized_embedding_table_bounds():
    table = helper.make_tensor("table_q", TensorProto.INT8, [40, 4], [0] * 160)
    scale = helper.make_tensor("scale", F, [], [0.1])
    model = _io_only(
        [("input_ids", I64, ["b", "s"])],
        [("h", F, ["b", "s", 4])],
        nodes=[
            helper.make_node("DequantizeLinear", ["table_q", "scale"], ["table"]),
            helper.make_node("Cast", ["input_ids"], ["ids32"], to=TensorProto.INT32),
            helper.make_node("Gather", ["table", "ids32"], ["h"]),
        ],
        initializers=[table, scale],
    )
    assert sequence.read(model).bounds == {"input_ids": 40}


# -- shapes and feeds ----------------------------------------------------------------------------


def test_decoder_shapes_follow_the_phase():
    model = Model.load(models.tiny_decoder())
    shapes, notes = representative_shapes(model.inputs, model=model)
    assert shapes["input_ids"] == (1, 1)
    assert shapes["attention_mask"] == (1, 129)  # past_sequence_length + sequence_length
    assert shapes["past_key_values.0.key"] == (1, 2, 128, 4)
    assert any("decode: 1 token after 128" in n for n in notes)
    prefill = sequence.phases(sequence.read(model))[1]
    shapes, _ = representative_shapes(model.inputs, model=model, phase=prefill)
    assert shapes["input_ids"] == (1, 128)
    assert shapes["attention_mask"] == (1, 128)
    assert shapes["past_key_values.0.key"] == (1, 2, 0, 4)


def test_given_sizes_solve_the_expressions():
    model = Model.load(models.tiny_decoder())
    shapes, _ = representative_shapes(
        model.inputs, {"past_sequence_length": 0, "sequence_length": 5}, model=model
    )
    assert shapes["attention_mask"] == (1, 5)
    # The mask's size alone gives the past, once the new tokens are known.
    given = {
        "input_ids": np.zeros((1, 3), np.int64),
        "attention_mask": np.ones((1, 10), np.int64),
    }
    shapes, _ = resolve_shapes(model.inputs, arrays=given)
    assert shapes["past_key_values.0.key"] == (1, 2, 7, 4)


def test_resolve_shapes_keeps_expressions_consistent():
    # Every dynamic dimension at 1 used to give the mask 1 where past + new tokens is 2.
    model = Model.load(models.tiny_decoder())
    shapes, _ = resolve_shapes(model.inputs)
    assert shapes["attention_mask"] == (1, 2)
    session = ort.InferenceSession(model.proto.SerializeToString())
    session.run(None, random_feeds(model.inputs, shapes))


def test_phases_fit_the_position_table():
    roles = sequence.read(models.tiny_decoder(positions=64))
    decode, prefill = sequence.phases(roles)
    assert decode.past == 63 and prefill.sequence == 64


def test_decoder_feeds_are_what_a_decoder_sees():
    model = Model.load(models.tiny_decoder(vocab=50))
    roles = sequence.read(model)
    session = ort.InferenceSession(model.proto.SerializeToString())
    for phase in sequence.phases(roles, batch=2):
        shapes, _ = representative_shapes(model.inputs, model=model, phase=phase)
        feeds = random_feeds(model.inputs, shapes, roles=roles, phase=phase, seed=1)
        ids = feeds["input_ids"]
        assert ids.min() >= 0 and ids.max() < 50 and not (ids == roles.pad_id).any()
        assert (feeds["attention_mask"] == 1).all()
        want = np.arange(phase.past, phase.past + phase.sequence)
        assert (feeds["position_ids"] == want).all()
        if phase.past:
            assert feeds["past_key_values.0.key"].std() > 0.5
        logits, key, _ = session.run(None, feeds)
        assert np.isfinite(logits).all()
        assert key.shape[2] == phase.past + phase.sequence


def test_encoder_feeds_pad_later_rows_never_the_first():
    model = Model.load(encoder_models.encoder(vocab=60, token_types=True, max_positions=512))
    roles = sequence.read(model)
    feeds = random_feeds(model.inputs, {"batch_size": 4, "sequence_length": 16}, roles=roles)
    mask = feeds["attention_mask"]
    assert mask[0].all() and mask.sum(axis=1).min() >= 1
    assert (np.diff(mask.sum(axis=1)) <= 0).all() and mask[-1].sum() < 16
    assert (feeds["token_type_ids"] == 0).all()
    assert feeds["input_ids"].max() < 60


def test_feeds_for_models_without_roles_are_unchanged():
    model = Model.load(models.relu())
    a = random_feeds(model.inputs, {"N": 2}, seed=3)
    b = random_feeds(model.inputs, {"N": 2}, seed=3, roles=sequence.read(model))
    assert np.array_equal(a["x"], b["x"])


def test_engine_roles():
    import infer

    with infer.Engine.load(models.tiny_decoder(), device="cpu", choose="first") as engine:
        assert engine.roles.is_decoder
        assert engine.roles.ids == "input_ids"


# -- the race ------------------------------------------------------------------------------------


def test_the_race_times_a_decoder_s_decode_step_and_prefill():
    import infer

    # A position table of 128 rows: the race used to size every dim at 128 and index past it.
    with infer.Engine.load(
        models.tiny_decoder(positions=128), device="cpu", choose="measure"
    ) as engine:
        text = "\n".join(a.reason for a in engine.selection)
        assert "could not run" not in text
        assert "decode: 1 token after 127 (batch 1), deciding" in text
        assert "prefill: a 128-token prompt (batch 1)" in text
        assert "attention_mask 1x128" in text  # 127 past + 1 new
        assert "ms prefill" in text


def test_the_background_race_on_a_decoder_adds_its_decode_step(tmp_path, monkeypatch):
    import infer
    from infer import _switch

    monkeypatch.setattr(_switch, "RACE_AFTER_S", 0.0)
    with infer.Engine.load(models.tiny_decoder(), device="cpu", cache_dir=tmp_path) as engine:
        prefill = sequence.phases(engine.roles)[1]
        shapes, _ = representative_shapes(engine.inputs, model=engine.model, phase=prefill)
        prompt = random_feeds(engine.inputs, shapes, roles=engine.roles)
        for _ in range(_switch.MIN_RUNS + 1):
            engine.run(prompt)
        assert engine.settle(timeout=120)
        chosen = next(a for a in engine.selection if a.verdict == "selected")
        # The prompt the user ran is timed, and the decode step decides.
        assert "decode: 1 token after 128 (batch 1), deciding" in chosen.reason
        assert "the first feeds (input_ids 1x128" in chosen.reason


def test_an_encoder_races_at_a_representative_length():
    import infer

    with infer.Engine.load(
        encoder_models.encoder(vocab=60, token_types=True, max_positions=512),
        device="cpu",
        choose="measure",
    ) as engine:
        text = "\n".join(a.reason for a in engine.selection)
        assert "encode: 128 tokens (batch 1)" in text
        assert "input_ids 1x128" in text


def test_phases_fit_a_position_table_the_graph_indexes_itself():
    roles = sequence.read(encoder_models.encoder(max_positions=64))
    assert roles.max_positions == 64
    assert sequence.phases(roles)[0].sequence == 64
