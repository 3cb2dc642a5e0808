"""infer._onnx, the ONNX toolbox: walkers over nested subgraphs, node helpers, opsets, saving."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from infer import _onnx
from infer.backends import _ov_onnx
from infer.model import Model

from . import models


def _branch(name: str, node: onnx.NodeProto, *, weight: str | None = None) -> onnx.GraphProto:
    """A one-node If branch whose output is `node`'s, with an optional initializer."""
    inits = [numpy_helper.from_array(np.ones(1, np.float32), weight)] if weight else []
    out = helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None)
    return helper.make_graph([node], name, [], [out], initializer=inits)


def _nested() -> onnx.ModelProto:
    """x -> Relu "first" -> r; If "outer" on c (then: If "inner" on c, whose branches read x and
    r; else: Neg of r) -> y; an unnamed Identity y -> z."""
    inner = helper.make_node(
        "If",
        ["c"],
        ["inner_out"],
        name="inner",
        then_branch=_branch("deep_then", helper.make_node("Abs", ["x"], ["deep_a"]), weight="w2"),
        else_branch=_branch("deep_else", helper.make_node("Sqrt", ["r"], ["deep_b"])),
    )
    outer = helper.make_node(
        "If",
        ["c"],
        ["y"],
        name="outer",
        then_branch=_branch("then", inner),
        else_branch=_branch("else", helper.make_node("Neg", ["r"], ["neg"]), weight="w1"),
    )
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["r"], name="first"),
            outer,
            helper.make_node("Identity", ["y"], ["z"]),
        ],
        "main",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1]),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.zeros(1, np.float32), "w0")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_walk_finds_every_graph_with_its_path_holder_and_parent():
    model = _nested()
    scopes = list(_onnx.walk(model.graph))
    # Depth first, in the order of the nodes and of their attributes (helper sorts those).
    assert [s.graph.name for s in scopes] == ["main", "else", "then", "deep_else", "deep_then"]
    assert [s.path for s in scopes] == [
        "",
        "outer/else_branch",
        "outer/then_branch",
        "outer/then_branch/inner/else_branch",
        "outer/then_branch/inner/then_branch",
    ]
    assert [s.depth for s in scopes] == [0, 1, 1, 2, 2]
    assert [s.holder.name if s.holder else None for s in scopes] == [
        None,
        "outer",
        "outer",
        "inner",
        "inner",
    ]
    assert [s.attribute for s in scopes] == ["", *["else_branch", "then_branch"] * 2]
    assert [s.index for s in scopes[1:]] == [1, 1, 0, 0]
    assert scopes[3].parent is scopes[2] and scopes[2].parent is scopes[0]
    assert [g.name for g in _onnx.graphs(model.graph)] == [s.graph.name for s in scopes]


def test_unnamed_holders_and_graph_lists_are_labelled_by_position():
    body = _branch("b", helper.make_node("Neg", ["x"], ["n"]))
    node = helper.make_node("Custom", ["x"], ["y"], domain="local")
    node.attribute.append(helper.make_attribute("bodies", [body, body]))
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["r"]), node], "g", [], [])
    assert [s.path for s in _onnx.walk(graph)] == ["", "Custom_1/bodies[0]", "Custom_1/bodies[1]"]
    assert [name for name, _ in _onnx.subgraphs(node)] == ["bodies[0]", "bodies[1]"]


def test_nodes_come_before_the_nodes_of_their_subgraphs():
    model = _nested()
    walked = [
        (n.op_type, [h.name for h in holders]) for n, holders in _onnx.walk_nodes(model.graph)
    ]
    assert walked == [
        ("Relu", []),
        ("If", []),
        ("Neg", ["outer"]),
        ("If", ["outer"]),
        ("Sqrt", ["outer", "inner"]),
        ("Abs", ["outer", "inner"]),
        ("Identity", []),
    ]
    assert [n.op_type for n in _onnx.nodes(model.graph)] == [op for op, _ in walked]


def test_tensors_cover_subgraphs_sparse_initializers_attributes_and_functions():
    model = _nested()
    const = helper.make_node(
        "Constant", [], ["k"], value=numpy_helper.from_array(np.ones(2, np.float32), "k_value")
    )
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(np.ones(1, np.float32), "s_values"),
        numpy_helper.from_array(np.zeros(1, np.int64), "s_indices"),
        [4],
    )
    model.graph.sparse_initializer.append(sparse)
    branch = _branch("fn_then", helper.make_node("Neg", ["a"], ["b"]), weight="fn_w")
    fn_if = helper.make_node("If", ["c"], ["o"], then_branch=branch, else_branch=branch)
    fn_const = helper.make_node(
        "Constant", [], ["c"], value=numpy_helper.from_array(np.array(True), "fn_c")
    )
    model.functions.append(
        helper.make_function(
            "local", "F", ["a"], ["o"], [fn_const, fn_if], [helper.make_opsetid("", 17)]
        )
    )
    model.graph.node.append(const)
    names = [t.name for t in _onnx.tensors(model)]
    expected = {"w0", "w1", "w2", "s_values", "s_indices", "k_value", "fn_w", "fn_c"}
    assert expected <= set(names)
    assert names.count("fn_w") == 2  # the function's If holds the branch twice


def test_node_name_and_attribute():
    named = helper.make_node("LSTM", ["x"], ["", "y_h"], name="lstm", layout=1, hidden_size=4)
    unnamed = helper.make_node("LSTM", ["x"], ["", "y_h"])
    outputless = helper.make_node("Foo", [], [""])
    assert _onnx.node_name(named) == "lstm"
    assert _onnx.node_name(unnamed) == "y_h"
    assert _onnx.node_name(outputless) == "Foo"
    assert _onnx.attribute(named, "layout", 0) == 1
    assert _onnx.attribute(unnamed, "layout", 0) == 0
    assert _onnx.attribute(unnamed, "direction") is None
    pads = helper.make_node("Pad", ["x"], ["y"], mode=b"reflect", axes_hint=[1, 2])
    assert _onnx.attribute(pads, "mode") == b"reflect"
    assert _onnx.attribute(pads, "axes_hint") == [1, 2]


def test_constants_hold_initializers_and_constant_nodes_values():
    w = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    z = numpy_helper.from_array(np.array(3, np.int8), "z_value")
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["z"], value=z),
            helper.make_node("Constant", [], ["f"], value_float=1.5),  # not a tensor value
            helper.make_node("MatMul", ["x", "w"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
        [w],
    )
    found = _onnx.constants(graph)
    assert sorted(found) == ["w", "z"]
    assert numpy_helper.to_array(found["z"]) == 3
    assert numpy_helper.to_array(found["w"]).shape == (2, 2)


def test_opset_reads_the_default_domain_or_any_other():
    model = models.relu()
    assert _onnx.opset(model) == models.OPSET
    assert _onnx.opset(model, "ai.onnx") == models.OPSET
    assert _onnx.opset(model, "com.microsoft") is None
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    assert _onnx.opset(model, "com.microsoft") == 1
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("ai.onnx", 13))
    assert _onnx.opset(model) == 13


def test_save_keeps_a_large_model_in_external_data(tmp_path, monkeypatch):
    model = models.cnn()
    _onnx.save(model, tmp_path / "small.onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["small.onnx"]
    monkeypatch.setattr(_onnx, "LARGE_MODEL_BYTES", model.ByteSize() - 1)
    assert _onnx.is_large(model)
    _onnx.save(model, tmp_path / "big.onnx")
    assert (tmp_path / "big.onnx.data").is_file()
    loaded = Model.load(tmp_path / "big.onnx")
    assert [p.name for p in loaded.external_data] == ["big.onnx.data"]
    assert model == models.cnn()  # the caller's model keeps its tensors
    for saved, original in zip(loaded.proto.graph.initializer, model.graph.initializer):
        np.testing.assert_array_equal(numpy_helper.to_array(saved), numpy_helper.to_array(original))


def test_openvino_readers_count_a_subgraph_read_for_its_outermost_holder():
    # x is read only inside outer's nested then-branch; r by "first" (and later in branches).
    readers = _ov_onnx._readers(_nested().graph)
    assert readers["x"] == ("Relu", "first")
    assert readers["c"] == ("If", "outer")
    assert readers["r"] == ("If", "outer")  # first read in a branch, after "first" produced it
    assert readers["y"] == ("Identity", "z")
    graph = helper.make_graph(
        [
            helper.make_node("Dropout", ["x", "ratio"], ["d"], name="drop"),
            helper.make_node("Dropout", ["x", "ratio2", "train"], ["e"], name="train_drop"),
        ],
        "g",
        [],
        [],
    )
    readers = _ov_onnx._readers(graph)
    assert "ratio" not in readers  # Dropout's ratio is not read at inference
    assert readers["ratio2"] == ("Dropout", "train_drop")


@pytest.mark.parametrize("layout", [0, 1])
def test_openvino_miscomputed_finds_batch_first_rnns_in_subgraphs(layout):
    rnn = helper.make_node("RNN", ["X", "W", "R"], ["", "Y_h"], hidden_size=2, layout=layout)
    graph = helper.make_graph(
        [
            helper.make_node(
                "If", ["c"], ["y"], then_branch=_branch("t", rnn), else_branch=_branch("e", rnn)
            )
        ],
        "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = Model.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    pytest.importorskip("openvino")
    reason = _ov_onnx.miscomputed(model)
    if layout:
        assert "RNN with layout=1" in reason and "'Y_h'" in reason
    else:
        assert reason == ""


def test_compressed_matmuls_are_those_over_dequantized_integer_weights():
    assert _onnx.compressed_matmuls(models.encoder().graph) == ["MatMul_2", "MatMul_5"]
    assert _onnx.compressed_matmuls(models.encoder(int8_weights=False).graph) == []
    # A Q/DQ graph (activations dequantized too) quantizes its own activations: not one.
    proto = models.encoder()
    graph = proto.graph
    q = helper.make_node("QuantizeLinear", ["h0", "act.scale"], ["h0.q"])
    dq = helper.make_node("DequantizeLinear", ["h0.q", "act.scale"], ["h0.dq"])
    graph.initializer.append(numpy_helper.from_array(np.array(0.05, np.float32), "act.scale"))
    matmul = next(n for n in graph.node if n.op_type == "MatMul")
    matmul.input[0] = "h0.dq"
    graph.node.insert(1, dq)
    graph.node.insert(1, q)
    assert _onnx.compressed_matmuls(graph) == ["MatMul_7"]  # the second MatMul only


def test_output_shapes_at_given_input_shapes():
    assert _onnx.output_shapes(models.encoder(), {"input_ids": (3, 7)}) == {
        "last_hidden_state": (3, 7, 64)
    }
    assert _onnx.output_shapes(models.cnn(), {"input": (2, 3, 32, 32)}) == {"logits": (2, 10)}
    # a Reshape's -1 over no elements is undefined: not known
    shape = numpy_helper.from_array(np.array([0, 0, -1, 16], np.int64), "heads")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "heads"], ["y"])],
        "heads",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert _onnx.output_shapes(model, {"x": (2, 8, 64)}) == {"y": (2, 8, 4, 16)}
    assert _onnx.output_shapes(model, {"x": (0, 8, 64)}) == {"y": None}
