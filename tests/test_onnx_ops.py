"""The opset-23/24/25 transformer ops as exporters write them (``compiler/onnx_ops.py``): Attention,
RotaryEmbedding, RMSNormalization and LayerNormalization, each mode compiled by tide for the CPU,
run through the C runtime and compared element by element with onnxruntime (where it implements the
mode) and with the ONNX reference implementation evaluated in float64; modes tide does not compile
are refused naming node, op and opset. Then a transformers Llama exported by torch's dynamo exporter
at opsets 23 and 18, against onnxruntime on the same file, and the opset-23 export compiled for CUDA
and for Ascend (run there by the CPU runner).

One compile checks many cases: every model here holds several nodes, each a mode.
"""

from __future__ import annotations

import subprocess
import sys

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper
from onnx.reference import ReferenceEvaluator

import tide
from tide.compiler.driver import CompileOptions, compile_model
from tide.compiler.errors import CompileError
from tide.targets.ascend import toolchain


def _model(nodes: list, feeds: dict, outputs: list[str], opset: int) -> onnx.ModelProto:
    """A graph of ``nodes`` over the inputs ``feeds`` (name -> array), its outputs typed by shape
    inference."""
    inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
              for n, a in feeds.items()]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_empty_tensor_value_info(o) for o in outputs])
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]),
                                              strict_mode=True)
    typed = {v.name: v for v in model.graph.value_info}
    del model.graph.output[:]
    model.graph.output.extend(typed[o] for o in outputs)
    return model


def _used(nodes: list, feeds: dict) -> dict:
    names = {i for n in nodes for i in n.input}
    return {k: v for k, v in feeds.items() if k in names}


def _tide_run(tmp_path, model: onnx.ModelProto, feeds: dict, target: str = "cpu") -> dict:
    path = str(tmp_path / "m.onnx")
    onnx.save(model, path)
    compile_model(path, path + ".tide", CompileOptions(target=target, progress=False))
    return tide.load(path + ".tide").run(feeds)


def _reference(model: onnx.ModelProto, feeds: dict) -> dict:
    """The ONNX reference implementation on float64 copies of the float32 inputs. Outputs left
    unnamed get names first: the evaluator would store them under "", the name it also reads for
    an omitted optional input of a later node."""
    named = onnx.ModelProto()
    named.CopyFrom(model)
    for i, node in enumerate(named.graph.node):
        node.output[:] = [o or f"unused_{i}_{j}" for j, o in enumerate(node.output)]
    wide = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in feeds.items()}
    outs = ReferenceEvaluator(named).run(None, wide)
    return dict(zip((o.name for o in model.graph.output), outs))


def _onnxruntime(nodes: list, feeds: dict, outputs: list[str], opset: int) -> dict:
    model = _model(nodes, _used(nodes, feeds), outputs, opset)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(outputs, sess.run(None, _used(nodes, feeds))))


def _close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """float32 against float64 or another float32 implementation: each value here is a few float32
    operations deep (short reductions of unit-scale values), so every element lies within about ten
    float32 ulps (1.2e-6) of the largest magnitude: 1e-5 relative to it leaves margin and still
    fails on any wrong element (a sign, a mask, a head or a position mixed up moves values by
    O(1)). -inf entries (masked scores) must match exactly."""
    assert got.shape == want.shape, (what, got.shape, want.shape)
    scale = float(np.max(np.abs(want[np.isfinite(want)]), initial=1.0))
    np.testing.assert_allclose(got, want.astype(got.dtype), rtol=1e-5, atol=1e-5 * scale, err_msg=what)


def _check(got: dict, want: dict, names) -> None:
    for name in names:
        _close(got[name], want[name], name)


def _rand(rng, *shape, dtype=np.float32) -> np.ndarray:
    return rng.standard_normal(shape).astype(dtype)


# ---- Attention ---------------------------------------------------------------------------------

B, H, KH, S, D, P = 2, 4, 2, 3, 8, 2  # batch, query heads, KV heads, query length, head size, past


def _attention_feeds(rng) -> dict:
    feeds = {
        "q": _rand(rng, B, H, S, D), "k": _rand(rng, B, KH, S, D), "v": _rand(rng, B, KH, S, D),
        "pk": _rand(rng, B, KH, P, D), "pv": _rand(rng, B, KH, P, D),
        "q3": _rand(rng, B, S, H * D), "k3": _rand(rng, B, 5, KH * D), "v3": _rand(rng, B, 5, KH * 6),
        "fmask": _rand(rng, S, S), "fmask4": _rand(rng, B, 1, S, S), "fmask3": _rand(rng, H, S, S + P),
        "bmask": rng.random((B, 1, S, S)) > 0.4, "imask": rng.integers(-2, 3, (1, H, S, S)).astype(np.int64),
        "bshort": rng.random((S, 2)) > 0.2, "nonpad": np.array([3, 2], dtype=np.int64),
    }
    feeds["bmask"][1, 0, 2] = False  # a query row with no key left: its probabilities and Y are zero
    return feeds


def _attention_nodes(opset: int):
    """(nodes onnxruntime implements as the standard says, nodes checked against the reference
    only, outputs)."""
    A = helper.make_node
    both = [
        A("Attention", ["q", "k", "v"], ["gqa"], name="gqa"),
        A("Attention", ["q", "k", "v", "", "pk", "pv"], ["past_y", "present_k", "present_v", "past_qk"],
          name="past_causal", is_causal=1, qk_matmul_output_mode=3),
        # mode 0 is the raw product, before softcap (the standard's text and onnxruntime; the
        # reference implementation returns it capped)
        A("Attention", ["q", "k", "v", "fmask"], ["cap_y", "", "", "cap_qk0"], name="softcap_raw",
          softcap=0.7, scale=0.3, qk_matmul_output_mode=0),
        A("Attention", ["q", "k", "v", "fmask4"], ["cap1_y", "", "", "cap_qk1"], name="softcap_capped",
          softcap=1.5, qk_matmul_output_mode=1),
        A("Attention", ["q3", "k3", "v3"], ["y3d"], name="heads_3d", q_num_heads=H, kv_num_heads=KH, is_causal=1),
        A("Attention", ["q", "k", "v", "fmask3", "pk", "pv"], ["wide_y", "wide_k", "wide_v"], name="wide_softmax",
          softmax_precision=11),
        A("Attention", ["q", "k", "v", "imask"], ["int_y"], name="int_mask"),
    ]
    ref_only = [
        # onnxruntime fills mode-2 masked scores with a finite value, the standard with -inf
        A("Attention", ["q", "k", "v", "bmask"], ["bool_y", "", "", "bool_qk2"], name="bool_causal",
          is_causal=1, qk_matmul_output_mode=2),
        A("Attention", ["q", "k", "v", "bshort", "pk", "pv"], ["short_y", "short_k", "short_v"],
          name="short_mask"),  # onnxruntime rejects a mask shorter than the keys; the standard pads it
    ]
    if opset >= 24:
        both += [A("Attention", ["q", "k3_4d", "v3_4d", "", "", "", "nonpad"], ["nonpad_causal"],
                   name="nonpad_causal", is_causal=1),
                 A("Attention", ["q", "k3_4d", "v3_4d", "fmask35", "", "", "nonpad"], ["nonpad_mask"],
                   name="nonpad_mask")]
    outputs = [o for n in both + ref_only for o in n.output if o]
    return both, ref_only, outputs


@pytest.mark.parametrize("opset", [23, 24])
def test_attention_modes_match_onnxruntime_and_reference(opset, tmp_path):
    rng = np.random.default_rng(opset)
    feeds = _attention_feeds(rng)
    if opset >= 24:
        feeds["k3_4d"], feeds["v3_4d"] = _rand(rng, B, KH, 5, D), _rand(rng, B, KH, 5, D)
        feeds["fmask35"] = _rand(rng, B, 1, S, 5)
    both, ref_only, outputs = _attention_nodes(opset)
    model = _model(both + ref_only, _used(both + ref_only, feeds), outputs, opset)
    feeds = _used(both + ref_only, feeds)
    got = _tide_run(tmp_path, model, feeds)
    want = _reference(model, feeds)
    assert not np.any(got["bool_y"][1, :, 2]) and np.all(np.isfinite(got["bool_y"]))
    _check(got, want, [o for o in outputs if o != "cap_qk0"])
    ort_outs = [o for n in both for o in n.output if o]
    _check(got, _onnxruntime(both, feeds, ort_outs, opset), ort_outs)


def test_attention_sliding_window_opset25(tmp_path):
    """Opset 25's left/right windows with causal masking, a cache length and a boolean mask (the
    reference implementation only: onnxruntime 1.32 has no Attention-25)."""
    rng = np.random.default_rng(25)
    feeds = {"q": _rand(rng, B, H, S, D), "k": _rand(rng, B, KH, 5, D), "v": _rand(rng, B, KH, 5, D),
             "nonpad": np.array([4, 2], dtype=np.int64), "bmask": rng.random((S, 5)) > 0.2}
    A = helper.make_node
    nodes = [A("Attention", ["q", "k", "v"], ["w_causal"], left_window_size=1, is_causal=1),
             A("Attention", ["q", "k", "v", "", "", "", "nonpad"], ["w_nonpad"], left_window_size=1,
               right_window_size=0),
             A("Attention", ["q", "k", "v", "bmask"], ["w_mask"], right_window_size=1)]
    outputs = ["w_causal", "w_nonpad", "w_mask"]
    model = _model(nodes, feeds, outputs, 25)
    _check(_tide_run(tmp_path, model, feeds), _reference(model, feeds), outputs)


# ---- RotaryEmbedding ---------------------------------------------------------------------------


def test_rotary_embedding_modes(tmp_path):
    rng = np.random.default_rng(7)
    feeds = {"x4": _rand(rng, B, 3, 4, D), "x3": _rand(rng, B, 4, 3 * D),
             "pos": rng.integers(0, 10, (B, 4)).astype(np.int64),
             "cos": _rand(rng, 10, D // 2), "sin": _rand(rng, 10, D // 2),
             "cos6": _rand(rng, 10, 3), "sin6": _rand(rng, 10, 3),
             "cos_bs": _rand(rng, B, 4, D // 2), "sin_bs": _rand(rng, B, 4, D // 2),
             "cos_1s": _rand(rng, 1, 4, 2), "sin_1s": _rand(rng, 1, 4, 2)}
    R = helper.make_node
    both = [R("RotaryEmbedding", ["x4", "cos", "sin", "pos"], ["halves"]),
            R("RotaryEmbedding", ["x4", "cos", "sin", "pos"], ["pairs"], interleaved=1),
            R("RotaryEmbedding", ["x3", "cos6", "sin6", "pos"], ["partial_3d"], num_heads=3, rotary_embedding_dim=6),
            R("RotaryEmbedding", ["x3", "cos6", "sin6", "pos"], ["partial_pairs_3d"], num_heads=3,
              rotary_embedding_dim=6, interleaved=1),
            R("RotaryEmbedding", ["x4", "cos_bs", "sin_bs"], ["gathered"])]
    # caches broadcast over the batch: the reference broadcasts, onnxruntime wants them full
    ref_only = [R("RotaryEmbedding", ["x3", "cos_1s", "sin_1s"], ["broadcast"], num_heads=3,
                  rotary_embedding_dim=4, interleaved=1)]
    outputs = [n.output[0] for n in both + ref_only]
    model = _model(both + ref_only, feeds, outputs, 23)
    got = _tide_run(tmp_path, model, feeds)
    _check(got, _reference(model, feeds), outputs)
    names = [n.output[0] for n in both]
    _check(got, _onnxruntime(both, feeds, names, 23), names)


# ---- RMSNormalization, LayerNormalization ------------------------------------------------------


def test_castlike_and_reductions_over_infinite_rows(tmp_path):
    """CastLike (the cast Attention's function body writes) to float16, float64 and int32, and
    ReduceMax / ReduceMin over slices that hold only -inf / +inf (a fully masked attention row: TVM's
    reductions start from the lowest / highest finite value, which tide corrects), against
    onnxruntime."""
    rng = np.random.default_rng(5)
    x = _rand(rng, 4, 6) * 3
    x[1, :] = -np.inf
    x[2, :] = np.inf
    x[3, 2] = -np.inf
    feeds = {"x": x, "h": np.ones(2, np.float16), "d": np.ones(2, np.float64), "i": np.ones(2, np.int32)}
    A = helper.make_node
    nodes = [A("Constant", [], ["zero"], value=helper.make_tensor("zero", onnx.TensorProto.FLOAT, [], [0.0])),
             A("Constant", [], ["axes"], value=helper.make_tensor("axes", onnx.TensorProto.INT64, [1], [1])),
             A("IsInf", ["x"], ["isinf"]), A("Where", ["isinf", "zero", "x"], ["fx"]),
             A("CastLike", ["fx", "h"], ["to_h"]), A("CastLike", ["fx", "d"], ["to_d"]),
             A("CastLike", ["fx", "i"], ["to_i"]),
             A("ReduceMax", ["x", "axes"], ["max_keep"]), A("ReduceMin", ["x", "axes"], ["min_flat"], keepdims=0),
             A("ReduceMax", ["x"], ["max_all"], keepdims=0)]
    outputs = ["to_h", "to_d", "to_i", "max_keep", "min_flat", "max_all"]
    model = _model(nodes, _used(nodes, feeds), outputs, 18)
    got = _tide_run(tmp_path, model, _used(nodes, feeds))
    want = _onnxruntime(nodes, feeds, outputs, 18)
    for name in outputs:
        assert got[name].dtype == want[name].dtype, name
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert np.isneginf(got["max_keep"][1, 0]) and np.isposinf(got["min_flat"][2])


def test_softplus_keeps_its_precision_far_from_zero(tmp_path):
    """Softplus (which Mish's function body reads) where exp(x) is tiny: within a few float32 ulps of
    log(1 + exp(x)) in float64 at every magnitude, where log(1 + u) alone keeps a few bits."""
    x = np.concatenate([-np.geomspace(30, 1e-4, 200), np.geomspace(1e-4, 30, 200)]).astype(np.float32)
    got = _tide_run(tmp_path, _model([helper.make_node("Softplus", ["x"], ["y"])], {"x": x}, ["y"], 22), {"x": x})
    np.testing.assert_allclose(got["y"], np.logaddexp(0, x.astype(np.float64)), rtol=4e-7)


def test_half_precision_reductions_round_once(tmp_path):
    """float16 / bfloat16 MatMul, ReduceSum and Softmax over 2048 terms accumulate in float32 and
    round once: within one half ulp-step of the float64 result rounded to the half type (in the
    half type, the sum's rounding errors would grow with every term: tens of ulps here)."""
    rng = np.random.default_rng(21)
    A = helper.make_node
    for dtype in (np.float16, ml_dtypes.bfloat16):
        feeds = {"a": rng.standard_normal((3, 2048)).astype(dtype), "b": rng.standard_normal((2048, 5)).astype(dtype),
                 "r": rng.random((4, 2048)).astype(dtype)}
        nodes = [A("MatMul", ["a", "b"], ["ab"]), A("ReduceSum", ["r"], ["sum"], keepdims=0),
                 A("Softmax", ["a"], ["p"], axis=-1)]
        outputs = ["ab", "sum", "p"]
        got = _tide_run(tmp_path, _model(nodes, feeds, outputs, 18), feeds)
        wide = {k: v.astype(np.float64) for k, v in feeds.items()}
        e = np.exp(wide["a"] - wide["a"].max(axis=-1, keepdims=True))
        want = {"ab": wide["a"] @ wide["b"], "sum": np.array(wide["r"].sum()), "p": e / e.sum(axis=-1, keepdims=True)}
        bits = 10 if dtype == np.float16 else 7
        for name in outputs:
            assert got[name].dtype == dtype, name
            exact = want[name].astype(dtype).astype(np.float64)
            ulp = np.exp2(np.floor(np.log2(np.abs(exact))) - bits)
            error = np.abs(got[name].astype(np.float64) - exact) / ulp
            assert error.max() <= 1, (str(np.dtype(dtype)), name, float(error.max()))


def test_normalizations_on_every_axis(tmp_path):
    """Both norms from each axis (negative too), scale and bias broadcast from shapes shorter than
    the normalized ones (TVM's frontend got these wrong), both optional LayerNormalization outputs,
    and float64 data under the default float32 stash type."""
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((2, 3, 4, 5)) * 2 + 0.5).astype(np.float32)
    feeds = {"x": x, "s5": _rand(rng, 5), "s45": _rand(rng, 4, 5), "s345": _rand(rng, 3, 4, 5),
             "s311": _rand(rng, 3, 1, 1), "b5": _rand(rng, 5), "full": _rand(rng, 2, 3, 4, 5),
             "x64": _rand(rng, 2, 3, 4, 5, dtype=np.float64), "s64": _rand(rng, 4, 5, dtype=np.float64)}
    N = helper.make_node
    nodes = [N("RMSNormalization", ["x", "s5"], ["rms_last"]),
             N("RMSNormalization", ["x", "s345"], ["rms_axis1"], axis=1, epsilon=1e-3),
             N("RMSNormalization", ["x", "s45"], ["rms_axis0"], axis=0),
             N("RMSNormalization", ["x", "s311"], ["rms_neg3"], axis=-3),
             N("RMSNormalization", ["x64", "s64"], ["rms_f64"], axis=2),
             N("LayerNormalization", ["x", "s5", "b5"], ["ln_last", "ln_last_mean", "ln_last_inv"]),
             N("LayerNormalization", ["x", "s345"], ["ln_axis1", "ln_axis1_mean", "ln_axis1_inv"], axis=1),
             N("LayerNormalization", ["x", "s5"], ["ln_axis0"], axis=0, epsilon=1e-2),
             N("LayerNormalization", ["x", "s311", "s5"], ["ln_neg3", "", "ln_neg3_inv"], axis=-3),
             N("LayerNormalization", ["x", "full", "s45"], ["ln_axis2", "ln_axis2_mean"], axis=2)]
    outputs = [o for n in nodes for o in n.output if o]
    model = _model(nodes, feeds, outputs, 23)
    got = _tide_run(tmp_path, model, feeds)
    _check(got, _reference(model, feeds), outputs)
    _check(got, _onnxruntime(nodes, feeds, outputs, 23), outputs)


# ---- refusals ----------------------------------------------------------------------------------


REFUSED = {
    "half_softmax": (helper.make_node("Attention", ["q", "k", "v"], ["y"], name="half_softmax", softmax_precision=10),
                     23, r"softmax_precision=10"),
    "uneven_heads": (helper.make_node("Attention", ["q", "k3h", "v3h"], ["y"], name="uneven_heads"), 23,
                     r"4 query heads cannot share 3 KV heads"),
    "length1_mask": (helper.make_node("Attention", ["q", "k", "v", "m1"], ["y"], name="length1_mask"), 23,
                     r"length-1 key axis"),
    "mixed_attention": (helper.make_node("Attention", ["q", "k", "vb"], ["y"], name="mixed_attention"), 24,
                        r"V is bfloat16 and Q is float32: mixed-precision attention is not compiled"),
    "half_stash": (helper.make_node("RMSNormalization", ["x", "s"], ["y"], name="half_stash", stash_type=10),
                   23, r"stash_type=10"),
    "odd_rotary": (helper.make_node("RotaryEmbedding", ["x", "c", "c", "pos"], ["y"], name="odd_rotary",
                                    rotary_embedding_dim=3), 23, r"rotary_embedding_dim 3"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_modes_not_compiled_are_refused_by_name(case, tmp_path):
    node, opset, reason = REFUSED[case]
    rng = np.random.default_rng(0)
    arrays = {"q": _rand(rng, 1, 4, 2, 8), "k": _rand(rng, 1, 2, 2, 8), "v": _rand(rng, 1, 2, 2, 8),
              "k3h": _rand(rng, 1, 3, 2, 8), "v3h": _rand(rng, 1, 3, 2, 8), "m1": _rand(rng, 2, 1),
              "x": _rand(rng, 1, 2, 2, 8), "s": _rand(rng, 8), "c": _rand(rng, 4, 1),
              "pos": np.zeros((1, 2), dtype=np.int64)}
    arrays.update({f"{name}b": arrays[name].astype(ml_dtypes.bfloat16) for name in "qkv"})
    feeds = {k: arrays[k] for k in dict.fromkeys(node.input)}
    path = str(tmp_path / "m.onnx")
    onnx.save(_model([node], feeds, ["y"], opset), path)
    with pytest.raises(CompileError, match=rf"node '{case}' \(op {node.op_type}, opset {opset}\): .*{reason}"):
        compile_model(path, path + ".tide", CompileOptions(progress=False))


# ---- a Llama exported by torch's dynamo exporter -----------------------------------------------


class _Logits(torch.nn.Module):
    """Input ids -> logits, no cache: what the exporter traces."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids):
        return self.model(input_ids=ids, use_cache=False).logits


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A tiny LlamaForCausalLM (hidden 64, 2 layers, 4 heads, 2 KV heads, vocab 128; SDPA attention)
    exported by ``torch.onnx.export(dynamo=True)`` at opsets 23 and 18: opset -> ONNX path."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=128, max_position_embeddings=64,
                         attn_implementation="sdpa")
    module = _Logits(LlamaForCausalLM(config).eval())
    tmp = tmp_path_factory.mktemp("llama")
    ids = torch.from_numpy(_llama_ids(0))
    paths = {}
    for opset in (23, 18):
        paths[opset] = str(tmp / f"llama{opset}.onnx")
        torch.onnx.export(module, (ids,), paths[opset], dynamo=True, opset_version=opset, input_names=["ids"],
                          output_names=["logits"], verbose=False)
    return paths


def _llama_ids(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 128, (2, 8)).astype(np.int64)


def _llama_expected(path: str, ids: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]


@pytest.mark.parametrize("opset", [23, 18])
def test_dynamo_exported_llama_matches_onnxruntime(llama, opset, tmp_path):
    path = llama[opset]
    ops = {n.op_type for n in onnx.load(path).graph.node}
    if opset == 23:  # what the exporter writes today for SDPA and RMSNorm
        assert {"Attention", "RMSNormalization"} <= ops
    else:
        assert not {"Attention", "RMSNormalization"} & ops
    art = str(tmp_path / "llama.tide")
    compile_model(path, art, CompileOptions(progress=False))
    model = tide.load(art)
    for seed in range(2):
        ids = _llama_ids(seed)
        _close(model.run({"ids": ids})["logits"], _llama_expected(path, ids), f"logits, opset {opset}")


def test_dynamo_exported_llama_compiles_for_cuda(llama, tmp_path, monkeypatch):
    """The opset-23 export through the CUDA target (device code by nvcc for sm_80; no GPU needed),
    then run by the C runtime on the stand-in CUDA driver (tests/tide_test_models.py), which checks
    every call: each device function launched with device pointers, grid and block dimensions and
    shared memory within the limits. The stand-in does not execute generic kernels, so the numbers
    are not checked here (no GPU in CI)."""
    from tide import runtime
    from tide.compiler import artifact
    from tide_test_models import build_standin

    art = str(tmp_path / "llama-cuda.tide")
    compile_model(llama[23], art, CompileOptions(target="cuda", arch="sm_80", progress=False))
    read = artifact.read_artifact(art)
    assert read.target.kind == "cuda" and read.target.device_arch == "sm_80"
    assert [img.arch for img in read.device_code.images] == ["sm_80"]
    assert len(read.device_code.functions) >= len(read.plan.kernels)

    driver = build_standin("cuda_standin")
    log = tmp_path / "standin.log"
    monkeypatch.setenv("TIDE_STANDIN_LOG", str(log))
    monkeypatch.setenv("TIDE_STANDIN_CC", "80")   # an A100: the artifact's sm_80 code
    kinds = {"handle": "", "int32": "#", "float32": "#", "int64": "%", "float64": "%"}
    monkeypatch.setenv("TIDE_STANDIN_KERNELS", ";".join(
        f"{f.name}=" + ",".join(f"{kinds[a]}a{i}" for i, a in enumerate(f.args)) for f in read.device_code.functions))
    model = runtime.load(art, device="cuda", cuda_driver=driver)
    model.run({"ids": _llama_ids(0)})
    lines = log.read_text().splitlines()
    bad = [line for line in lines if any(k in line for k in ("is not a device pointer", "is not device memory",
                                                             "bad dimensions", "above the function's limit",
                                                             "no current context"))]
    assert not bad, bad[:5]
    launched = {line.split()[1] for line in lines if line.startswith("cuLaunchKernel ")}
    assert launched == {f.name for f in read.device_code.functions}


@pytest.mark.skipif(toolchain.missing_cpu_runner() is not None, reason=str(toolchain.missing_cpu_runner()))
def test_dynamo_exported_llama_on_the_ascend_cpu_runner(llama, tmp_path):
    """The opset-23 export compiled for Ascend 910B (every kernel translated to MLIR for bishengir),
    its kernels run on this CPU by the CPU runner, against onnxruntime."""
    art = str(tmp_path / "llama-910b.tide")
    compile_model(llama[23], art, CompileOptions(target="ascend", arch="Ascend910B1", progress=False))
    ids = _llama_ids(1)
    np.savez(tmp_path / "in.npz", ids=ids)
    proc = subprocess.run([sys.executable, "-m", "tide.targets.ascend.cpu_runner", art, "--inputs",
                           str(tmp_path / "in.npz"), "--outputs", str(tmp_path / "out.npz")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    _close(np.load(tmp_path / "out.npz")["logits"], _llama_expected(llama[23], ids), "logits on the Ascend runner")
