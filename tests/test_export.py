"""tide export: the ONNX graph contract (docs/onnx-contract.md) and agreement with transformers.

Tolerance of the logits comparisons (TOL): both sides compute in float32 with the same formulas;
they differ only in reduction order (GEMM blocking, softmax and einsum sums) and in the libm
implementations of exp/cos/sin, i.e. a few ulp per op. Through the 5 tiny layers that accumulates
to ~5e-6 on logits of magnitude ~4 (measured). TOL = 1e-4 is 20x that, yet 60x below the smallest
top-1/top-2 logit gap seen in the greedy runs (~6e-3), and every real bug we planted while building
this (top-k off by one, sinks dropped, clamp limit, position bias, score bias) moved logits by 0.8-2.6.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

import ml_dtypes
import numpy as np
import onnx
import onnx.inliner
import onnxruntime as ort
import pytest
import torch
from safetensors.numpy import load_file, save_file
from transformers import DeepseekV4ForCausalLM

from tide.compiler.export import FUNCTION_NAMES, ExportError, add_export_arguments, export, run_export
from tide.compiler.export import api as export_api
from tide.compiler.export import weights as export_weights
from tide.compiler.export.config import BUILTIN_CONFIGS, CSA, HCA, SLIDING, builtin_config, spec_from_config
from tide.compiler.export.weights import param_specs

TOL = 1e-4
VOCAB = 512
EOS = 1

# The op set the compiler's importer accepts (the contract), plus Constant.
ALLOWED_OPS = {
    "MatMul", "Gemm", "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Reciprocal", "Exp", "Log", "Cos", "Sin",
    "Sigmoid", "Softplus", "Relu", "Neg", "Abs", "ReduceSum", "ReduceMean", "ReduceMax", "Softmax", "Gather",
    "GatherElements", "GatherND", "ScatterND", "TopK", "Where", "Equal", "Less", "Greater", "And", "Not", "Cast",
    "Concat", "Slice", "Split", "Reshape", "Transpose", "Unsqueeze", "Squeeze", "Expand", "Range", "Shape", "Min",
    "Max", "Clip", "Einsum", "Tile", "ConstantOfShape", "Mod", "Constant",
}


# --------------------------------------------------------------------------------------------------
# helpers


class OrtModel:
    """Runs an exported graph, carrying present.* back as past.*."""

    def __init__(self, path):
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.state_inputs = [(i.name, i.shape) for i in self.sess.get_inputs()[2:]]
        self.batch = self.sess.get_inputs()[0].shape[0]

    def empty(self):
        return {name: np.zeros(shape, np.float32) for name, shape in self.state_inputs}

    def step(self, ids, start, state):
        ids = np.asarray(ids, np.int64).reshape(self.batch, -1)
        feeds = {"input_ids": ids, "start_pos": np.asarray(start, np.int64).reshape(self.batch), **state}
        outs = self.sess.run(None, feeds)
        return outs[0], {name: out for (name, _), out in zip(self.state_inputs, outs[1:])}

    def prefill_chunks(self, ids, chunks, state=None, start=0):
        state = self.empty() if state is None else state
        logits, pos = [], start
        for n in chunks:
            lo, state = self.step(ids[:, pos - start:pos - start + n], [pos], state)
            logits.append(lo)
            pos += n
        return np.concatenate(logits, axis=1), state


class HfRunner:
    """transformers with its own cache: one prefill forward, then one forward per token."""

    def __init__(self, model):
        self.model = model
        self.cache = None

    @torch.no_grad()
    def step(self, ids):
        out = self.model(torch.as_tensor(np.asarray(ids, np.int64).reshape(1, -1)), past_key_values=self.cache,
                         use_cache=True)
        self.cache = out.past_key_values
        return out.logits.numpy()


def load_hf(ckpt):
    model, info = DeepseekV4ForCausalLM.from_pretrained(str(ckpt), dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval()


def tokens(seed, n, vocab=VOCAB):
    return np.random.default_rng(seed).integers(2, vocab, size=(1, n)).astype(np.int64)


def assert_close(a, b, tol=TOL):
    diff = float(np.abs(np.asarray(a) - np.asarray(b)).max())
    assert diff <= tol, f"max |diff| = {diff:.3g} > {tol:.3g}"


def assert_steps_match(ours, hf, prompt, fed):
    """Prefill ``prompt`` from position 0, then decode each token of ``fed``: onnxruntime's logits
    against transformers' at every step."""
    logits, state = ours.step(prompt, [0], ours.empty())
    assert_close(logits, hf.step(prompt))
    for k in range(fed.shape[1]):
        logits, state = ours.step(fed[:, k:k + 1], [prompt.shape[1] + k], state)
        assert_close(logits, hf.step(fed[:, k:k + 1]))


def export_checkpoint_variant(src, dst, config_edit=None, tensor_edit=None):
    """Copies a saved checkpoint, editing its config dict and/or its tensor dict in place."""
    os.makedirs(dst)
    with open(os.path.join(src, "config.json")) as f:
        cfg = json.load(f)
    if config_edit:
        config_edit(cfg)
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(cfg, f)
    tensors = load_file(os.path.join(src, "model.safetensors"))
    if tensor_edit:
        tensor_edit(tensors)
    save_file(tensors, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    return dst


# --------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    result = export("tiny", root / "tiny.onnx", save_checkpoint=root / "ckpt")
    return result


@pytest.fixture(scope="module")
def tiny_ort(tiny):
    return OrtModel(tiny.path)


@pytest.fixture(scope="module")
def tiny_hf(tiny):
    return load_hf(tiny.checkpoint)


# --------------------------------------------------------------------------------------------------
# the graph contract


def _all_nodes(model):
    yield from ((None, n) for n in model.graph.node)
    for f in model.functions:
        yield from ((f.name, n) for n in f.node)


def test_graph_contract_structure(tiny):
    model = onnx.load(tiny.path)
    onnx.checker.check_model(model, full_check=True)
    assert {(o.domain, o.version) for o in model.opset_import} == {("", 18), ("tide", 1)}

    names = [s.name for s in tiny.states]

    def describe(value):
        t = value.type.tensor_type
        return value.name, t.elem_type, [d.dim_value or d.dim_param for d in t.shape.dim]

    inputs = [describe(i) for i in model.graph.input]
    outputs = [describe(o) for o in model.graph.output]
    assert inputs[:2] == [("input_ids", onnx.TensorProto.INT64, [1, "seq"]), ("start_pos", onnx.TensorProto.INT64, [1])]
    assert outputs[0] == ("logits", onnx.TensorProto.FLOAT, [1, "seq", VOCAB])
    assert [i[0] for i in inputs[2:]] == [f"past.{n}" for n in names]
    assert [o[0] for o in outputs[1:]] == [f"present.{n}" for n in names]
    for (_, it, ishape), (_, ot, oshape), s in zip(inputs[2:], outputs[1:], tiny.states):
        assert it == ot == onnx.TensorProto.FLOAT and ishape == oshape == list(s.shape)

    # Each present.X: exactly one ScatterND(data=past.X, reduction none), read by nobody.
    producers = {}
    for fname, node in _all_nodes(model):
        assert fname is None or node.op_type != "ScatterND", f"ScatterND inside function {fname}"
        for out in node.output:
            producers.setdefault(out, []).append(node)
        for inp in node.input:
            assert not inp.startswith("present."), f"{node.name} reads {inp}"
    scatters = [n for n in model.graph.node if n.op_type == "ScatterND"]
    assert len(scatters) == len(names)
    for n in names:
        (node,) = producers[f"present.{n}"]
        assert node.op_type == "ScatterND" and node.input[0] == f"past.{n}"
        assert all(a.s in (b"", b"none") for a in node.attribute if a.name == "reduction")

    # Standard ops only (plus tide functions); every V4 block is a documented function.
    functions = {f.name: f for f in model.functions}
    # a float export uses every function but the dequantizers (tests/test_export_quantized.py)
    assert set(functions) == set(FUNCTION_NAMES) - {"DequantizeFP8", "DequantizeFP4"}
    for fname, node in _all_nodes(model):
        if node.domain == "tide":
            assert node.op_type in functions, node.op_type
        else:
            assert node.domain == "" and node.op_type in ALLOWED_OPS, (fname, node.op_type)
    for f in model.functions:
        assert f.domain == "tide" and f.doc_string
        assert {(o.domain, o.version) for o in f.opset_import} == {("", 18), ("tide", 1)}
    called = {n.op_type for n in model.graph.node if n.domain == "tide"}
    assert {"SinkAttention", "SparseSinkAttention", "Compressor", "LightningIndexer", "MoERouter", "HashMoERouter",
            "MoEExperts", "SharedExpert", "HyperConnectionPre", "HyperConnectionPost", "HyperHead", "RMSNorm",
            "RoPE"} <= called


def test_topk_k_is_static(tiny):
    """After inlining the functions, no TopK's k depends on a graph input."""
    model = onnx.inliner.inline_local_functions(onnx.load(tiny.path))
    producer = {out: n for n in model.graph.node for out in n.output}
    graph_inputs = {i.name for i in model.graph.input}

    def depends_on_input(name, seen):
        if name in graph_inputs:
            return True
        node = producer.get(name)
        if node is None or name in seen:
            return False
        seen.add(name)
        return any(depends_on_input(i, seen) for i in node.input if i)

    topks = [n for n in model.graph.node if n.op_type == "TopK"]
    assert len(topks) == 2 + 3  # two indexers, three learned routers
    for node in topks:
        assert not depends_on_input(node.input[1], set()), node.name


def test_state_scatter_indices_are_distinct_and_in_range(tmp_path, tiny):
    """Runs a batch-2 export with rows at different start positions and inspects the index
    tensor of every state ScatterND: shape [B, n, 2], rows (b, slot) with b the batch row,
    slots in range and distinct within the call."""
    path = tmp_path / "b2.onnx"
    result = export("tiny", path, batch=2)
    model = onnx.load(path)
    scatters = [n for n in model.graph.node if n.op_type == "ScatterND"]
    for n in scatters:
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(n.input[1]))
    probe = tmp_path / "probe.onnx"
    onnx.save(model, probe)
    runner = OrtModel(probe)
    dims = {f"past.{s.name}": s.shape[1] for s in result.states}
    for seq, starts in ((1, (0, 37)), (3, (5, 14)), (17, (16, 100)), (40, (0, 63)), (64, (128, 3))):
        feeds = {"input_ids": np.ones((2, seq), np.int64), "start_pos": np.array(starts, np.int64), **runner.empty()}
        outs = runner.sess.run(None, feeds)[1 + len(result.states):]
        for node, idx in zip(scatters, outs):
            assert idx.ndim == 3 and idx.shape[0] == 2 and idx.shape[2] == 2, (node.input[0], idx.shape)
            assert (idx[:, :, 0] == np.arange(2)[:, None]).all()
            assert ((idx[:, :, 1] >= 0) & (idx[:, :, 1] < dims[node.input[0]])).all(), (node.input[0], seq, starts)
            for row in idx:
                assert len({tuple(r) for r in row}) == len(row), (node.input[0], seq, starts)


def test_parameters_match_transformers_state_dict(tiny):
    cfg = builtin_config("tiny")
    reference = DeepseekV4ForCausalLM(cfg).state_dict()
    ours = {p.name: (p.shape, p.integer) for p in param_specs(spec_from_config(cfg, "tiny"))}
    assert list(ours) == list(reference)
    for name, tensor in reference.items():
        assert ours[name] == (tuple(tensor.shape), not tensor.dtype.is_floating_point), name
    ckpt = load_file(os.path.join(tiny.checkpoint, "model.safetensors"))
    for name, value in ckpt.items():  # every parameter random and non-degenerate
        assert np.unique(value).size > 1 or value.size == 1, name
        assert np.all(value != 0) or name.endswith("tid2eid"), name
    tid2eid = ckpt["model.layers.0.mlp.gate.tid2eid"]
    assert all(len(set(row)) == row.size for row in tid2eid)


# --------------------------------------------------------------------------------------------------
# agreement with transformers


def test_greedy_generation_matches_transformers(tiny_ort, tiny_hf):
    prompt = tokens(3, 21)
    new = 40
    with torch.no_grad():
        ref = tiny_hf.generate(torch.tensor(prompt), max_new_tokens=new, do_sample=False, eos_token_id=EOS,
                               pad_token_id=0)[0, prompt.shape[1]:].tolist()
    ours = []
    logits, state = tiny_ort.step(prompt, [0], tiny_ort.empty())
    pos = prompt.shape[1]
    while len(ours) < new:
        tok = int(logits[0, -1].argmax())
        ours.append(tok)
        if tok == EOS:
            break
        logits, state = tiny_ort.step([[tok]], [pos], state)
        pos += 1
    assert len(ref) >= 32
    assert ours == ref


def test_teacher_forced_logits_match_transformers(tiny_ort, tiny_hf):
    prompt, fed = tokens(1, 37), tokens(2, 40)
    hf = HfRunner(tiny_hf)
    logits, state = tiny_ort.step(prompt, [0], tiny_ort.empty())
    assert_close(logits, hf.step(prompt))
    for k in range(fed.shape[1]):
        logits, state = tiny_ort.step(fed[:, k:k + 1], [prompt.shape[1] + k], state)
        assert_close(logits, hf.step(fed[:, k:k + 1]))


@pytest.mark.parametrize("chunks", [(3, 5, 7, 20, 10), (16, 1, 1, 2, 25)])
def test_chunked_prefill_matches_full_prefill(tiny_ort, tiny_hf, chunks):
    prompt = tokens(4, sum(chunks))  # 45 tokens: longer than the 16-token window
    full, full_state = tiny_ort.step(prompt, [0], tiny_ort.empty())
    with torch.no_grad():
        assert_close(full, tiny_hf(torch.tensor(prompt)).logits.numpy())
    chunked, state = tiny_ort.prefill_chunks(prompt, chunks)
    assert_close(chunked, full)
    for name in full_state:
        assert_close(state[name], full_state[name])
    nxt = tokens(5, 1)
    assert_close(tiny_ort.step(nxt, [45], state)[0], tiny_ort.step(nxt, [45], full_state)[0])


def test_batch2_rows_at_different_positions_match_transformers(tmp_path, tiny, tiny_ort, tiny_hf):
    b2 = OrtModel(export("tiny", tmp_path / "b2.onnx", batch=2).path)
    prompts = [tokens(6, 13), tokens(7, 29)]
    runners = [HfRunner(tiny_hf), HfRunner(tiny_hf)]
    states = []
    for prompt, hf in zip(prompts, runners):  # rows prefilled separately (batch 1), then stacked
        logits, state = tiny_ort.step(prompt, [0], tiny_ort.empty())
        assert_close(logits, hf.step(prompt))
        states.append(state)
    state = {name: np.concatenate([states[0][name], states[1][name]]) for name in states[0]}
    starts = np.array([13, 29])
    chunk = np.concatenate([tokens(8, 5), tokens(9, 5)])
    logits, state = b2.step(chunk, starts, state)
    for row, hf in enumerate(runners):
        assert_close(logits[row:row + 1], hf.step(chunk[row:row + 1]))
    starts += 5
    fed = np.concatenate([tokens(10, 12), tokens(11, 12)])
    for k in range(fed.shape[1]):
        logits, state = b2.step(fed[:, k:k + 1], starts + k, state)
        for row, hf in enumerate(runners):
            assert_close(logits[row:row + 1], hf.step(fed[row:row + 1, k:k + 1]))


def test_calls_ending_exactly_at_capacity(tmp_path, tiny_hf):
    """max_seq_len 32: the HCA cache has 32 // 16 + 1 = 3 rows, and a 16-token chunk from position 16
    writes candidate rows 1 and 2 (the spare row) -- all in range, and still exact."""
    ours = OrtModel(export("tiny", tmp_path / "cap.onnx", max_seq_len=32).path)
    assert dict(ours.state_inputs)["past.2.compressed"] == [1, 3, 64]
    prompt = tokens(20, 32)
    hf = HfRunner(tiny_hf)
    logits, state = ours.prefill_chunks(prompt[:, :29], (16, 13))
    assert_close(logits, hf.step(prompt[:, :29]))
    for pos in range(29, 32):
        logits, state = ours.step(prompt[:, pos:pos + 1], [pos], state)
        assert_close(logits, hf.step(prompt[:, pos:pos + 1]))
    chunked, _ = ours.prefill_chunks(prompt, (16, 16))
    with torch.no_grad():
        assert_close(chunked, tiny_hf(torch.tensor(prompt)).logits.numpy())


def test_bf16_export_matches_transformers_on_rounded_weights(tmp_path, tiny):
    result = export("tiny", tmp_path / "bf16.onnx", dtype="bfloat16", save_checkpoint=tmp_path / "ckpt")
    model = onnx.load(result.path)
    types = {t.name: t.data_type for t in model.graph.initializer}
    assert types["model.layers.0.mlp.gate.tid2eid"] == onnx.TensorProto.INT64
    assert {v for k, v in types.items() if not k.endswith("tid2eid")} == {onnx.TensorProto.BFLOAT16}
    # The bf16 weights are the fp32 ones rounded to nearest even.
    fp32 = load_file(os.path.join(tiny.checkpoint, "model.safetensors"))
    for t in model.graph.initializer[:12]:
        if t.data_type == onnx.TensorProto.BFLOAT16:
            stored = np.frombuffer(t.raw_data, dtype=ml_dtypes.bfloat16).reshape(tuple(t.dims))
            np.testing.assert_array_equal(stored, fp32[t.name].astype(ml_dtypes.bfloat16))

    ours, hf = OrtModel(result.path), HfRunner(load_hf(result.checkpoint))  # loaded as float32
    prompt, fed = tokens(12, 30), tokens(13, 8)
    assert_steps_match(ours, hf, prompt, fed)


def test_flash_2layer_matches_transformers(tmp_path):
    """Real V4-Flash attention dims (D 4096, 64 heads x 512, q_lora 1024, 8 groups x 1024, window 128,
    64 x 128 indexer, ratios 4 / 128) with vocab and experts shrunk to fit the test machine. The
    130-token prompt completes one HCA window (ratio 128) and 32 CSA windows; weights are ~1.9 GB,
    so this also exercises ONNX external data. Measured error ~5e-6, as for tiny."""
    overrides = {"vocab_size": 1024, "n_routed_experts": 4, "num_experts_per_tok": 2}
    result = export("flash-2layer", tmp_path / "flash.onnx", max_seq_len=256, config_overrides=overrides,
                    save_checkpoint=tmp_path / "ckpt")
    assert result.data_path and os.path.getsize(result.data_path) > export_api.EXTERNAL_DATA_THRESHOLD
    assert result.spec.head_dim == 512 and result.spec.heads == 64 and result.spec.layer_kinds == ("csa", "hca")
    onnx.checker.check_model(result.path, full_check=True)
    hf = HfRunner(load_hf(result.checkpoint))
    ours = OrtModel(result.path)
    prompt, fed = tokens(14, 130, 1024), tokens(15, 4, 1024)
    assert_steps_match(ours, hf, prompt, fed)


def test_full_depth_configs_follow_the_released_layer_schedules(tmp_path):
    """flash and pro are 43 and 61 layers with the released schedules (flash: layers 0-1 sliding, CSA
    on even, HCA on odd; pro: 0-1 HCA, then the same; hash MoE on 0-2); `--layers N` keeps the first N.
    The first 5 layers of flash at tiny's widths match transformers (prefill, then decode steps)."""
    flash, pro = builtin_config("flash"), builtin_config("pro")

    def counts(cfg):
        return tuple(sum(t == kind for t in cfg.layer_types) for kind in (SLIDING, CSA, HCA))

    assert (flash.num_hidden_layers, counts(flash)) == (43, (2, 21, 20))
    assert (pro.num_hidden_layers, counts(pro)) == (61, (0, 30, 31))
    assert flash.layer_types[:5] == [SLIDING, SLIDING, CSA, HCA, CSA]
    assert pro.layer_types[:5] == [HCA, HCA, CSA, HCA, CSA]
    for cfg in (flash, pro):
        n = cfg.num_hidden_layers
        assert list(cfg.mlp_layer_types) == ["hash_moe"] * 3 + ["moe"] * (n - 3)
        assert cfg.hidden_size == BUILTIN_CONFIGS[f"{'flash' if cfg is flash else 'pro'}-2layer"]["hidden_size"]
    widths = {k: v for k, v in BUILTIN_CONFIGS["tiny"].items()
              if k not in ("num_hidden_layers", "layer_types", "mlp_layer_types")}
    result = export("flash", tmp_path / "flash5.onnx", layers=5, max_seq_len=64, config_overrides=widths,
                    save_checkpoint=tmp_path / "ckpt")
    assert result.spec.layer_kinds == ("sliding", "sliding", "csa", "hca", "csa")
    assert result.spec.hash_layers == (True, True, True, False, False)
    hf = HfRunner(load_hf(result.checkpoint))
    ours = OrtModel(result.path)
    prompt, fed = tokens(21, 37), tokens(22, 4)
    assert_steps_match(ours, hf, prompt, fed)
    with pytest.raises(ExportError, match="layers: expected a positive integer, got 0"):
        export("tiny", tmp_path / "none.onnx", layers=0)
    with pytest.raises(ExportError, match="--layers applies to built-in configs only"):
        export(result.checkpoint, tmp_path / "x.onnx", layers=3)
    assert not os.path.exists(tmp_path / "none.onnx") and not os.path.exists(tmp_path / "x.onnx")


def test_tied_embeddings(tmp_path):
    result = export("tiny", tmp_path / "tied.onnx", config_overrides={"tie_word_embeddings": True},
                    save_checkpoint=tmp_path / "ckpt")
    assert "lm_head.weight" not in {t.name for t in onnx.load(result.path).graph.initializer}
    prompt = tokens(17, 24)
    ours = OrtModel(result.path)
    with torch.no_grad():
        assert_close(ours.step(prompt, [0], ours.empty())[0], load_hf(result.checkpoint)(torch.tensor(prompt)).logits)


@pytest.mark.heavy
def test_pro_2layer_matches_transformers(tmp_path):
    """V4-Pro attention dims (D 7168, 128 heads x 512, q_lora 1536, 16 groups x 1024, top-k 1024 above
    the cache rows) with vocab and experts shrunk: ~4 GB of weights, ~50 s and 10 GB of memory."""
    overrides = {"vocab_size": 1024, "n_routed_experts": 2, "num_experts_per_tok": 1}
    result = export("pro-2layer", tmp_path / "pro.onnx", max_seq_len=256, config_overrides=overrides,
                    save_checkpoint=tmp_path / "ckpt")
    assert result.spec.heads == 128 and result.spec.o_groups == 16 and result.spec.q_lora == 1536
    hf = HfRunner(load_hf(result.checkpoint))
    ours = OrtModel(result.path)
    prompt, fed = tokens(18, 131, 1024), tokens(19, 3, 1024)
    assert_steps_match(ours, hf, prompt, fed)


# --------------------------------------------------------------------------------------------------
# options and outputs


def _first_logits(path, n=20):
    runner = OrtModel(path)
    return runner.step(tokens(16, n), [0], runner.empty())[0]


@pytest.mark.parametrize("opset", [17, 23])
def test_other_opsets_give_the_same_logits(tmp_path, tiny, opset):
    path = export("tiny", tmp_path / f"tiny{opset}.onnx", opset=opset).path
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert {(o.domain, o.version) for o in model.opset_import} == {("", opset), ("tide", 1)}
    np.testing.assert_array_equal(_first_logits(path), _first_logits(tiny.path))


def test_external_data_above_threshold(tmp_path, tiny, monkeypatch):
    monkeypatch.setattr(export_api, "EXTERNAL_DATA_THRESHOLD", 1 << 20)
    result = export("tiny", tmp_path / "ext.onnx")
    assert result.data_path == str(tmp_path / "ext.onnx") + ".data" and os.path.isfile(result.data_path)
    assert os.path.getsize(result.path) < (1 << 20)
    np.testing.assert_array_equal(_first_logits(result.path), _first_logits(tiny.path))


def test_reexport_of_saved_checkpoint_is_identical(tmp_path, tiny):
    again = export(tiny.checkpoint, tmp_path / "again.onnx")
    with open(tiny.path, "rb") as a, open(again.path, "rb") as b:
        assert a.read() == b.read()


def test_sharded_checkpoint_with_index(tmp_path, tiny):
    shard_dir = tmp_path / "sharded"
    shard_dir.mkdir()
    shutil.copy(os.path.join(tiny.checkpoint, "config.json"), shard_dir)
    tensors = load_file(os.path.join(tiny.checkpoint, "model.safetensors"))
    names = list(tensors)
    weight_map = {}
    for k, part in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
        fname = f"model-0000{k + 1}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, shard_dir / fname, metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
    (shard_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    again = export(shard_dir, tmp_path / "sharded.onnx")
    with open(tiny.path, "rb") as a, open(again.path, "rb") as b:
        assert a.read() == b.read()


def test_seeded_weights_are_reproducible_per_tensor():
    specs = param_specs(spec_from_config(builtin_config("tiny"), "tiny"))
    name = "model.layers.1.self_attn.sinks"
    seed0 = export_weights.RandomWeights(specs, 0, 16).get(name)
    np.testing.assert_array_equal(seed0, export_weights.RandomWeights(specs, 0, 16).get(name))
    assert not np.array_equal(seed0, export_weights.RandomWeights(specs, 1, 16).get(name))


def test_cli_entry_points(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="tide export")
    add_export_arguments(parser)
    out = tmp_path / "cli.onnx"
    args = parser.parse_args(["tiny", "-o", str(out), "--max-seq-len", "64", "--batch", "2", "--dtype", "bfloat16"])
    assert run_export(args) == 0
    assert out.is_file() and "wrote" in capsys.readouterr().out
    model = onnx.load(out)
    compressed = next(i for i in model.graph.input if i.name == "past.2.compressed")
    assert [d.dim_value for d in compressed.type.tensor_type.shape.dim] == [2, 64 // 16 + 1, 64]
    assert run_export(parser.parse_args(["nonesuch", "-o", str(tmp_path / "x.onnx")])) == 1
    assert "nonesuch" in capsys.readouterr().err and not (tmp_path / "x.onnx").exists()


# --------------------------------------------------------------------------------------------------
# bad input


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def _edit(key, value):
    def edit(cfg):
        cfg[key] = value
    return edit


def _drop(name):
    def edit(tensors):
        del tensors[name]
    return edit


def _retype(name, dtype):
    def edit(tensors):
        tensors[name] = tensors[name].astype(dtype)
    return edit


def _reshape(name):
    def edit(tensors):
        tensors[name] = tensors[name][:-1]
    return edit


def _legacy_ratios(cfg):
    del cfg["layer_types"]
    cfg["compress_ratios"] = [0, 4, 64, 4, 128]


def _bad_tid2eid(tensors):
    tensors["model.layers.1.mlp.gate.tid2eid"] = tensors["model.layers.1.mlp.gate.tid2eid"] + 16


BAD_CHECKPOINTS = {
    "model_type": (dict(config_edit=_edit("model_type", "llama")), r"config\.json: field 'model_type': expected "
                                                                   r"'deepseek_v4', got 'llama'"),
    "kv_heads": (dict(config_edit=_edit("num_key_value_heads", 2)), r"'num_key_value_heads': expected 1 .*got 2"),
    "scoring": (dict(config_edit=_edit("scoring_func", "softmax")), r"'scoring_func': expected 'sqrtsoftplus', "
                                                                    r"got 'softmax'"),
    "compress_rate": (dict(config_edit=_edit("compress_rates", {"compressed_sparse_attention": 4,
                                                                "heavily_compressed_attention": 0})),
                      r"compress_rates\['heavily_compressed_attention'\]': expected a positive integer .*got 0"),
    "legacy_ratio": (dict(config_edit=_legacy_ratios), r"'compress_ratios': expected values in \[0, 4, 128\], "
                                                       r"got \[64\]"),
    "hc_mult": (dict(config_edit=_edit("hc_mult", 2)), r"tensor 'model\.layers\.0\.attn_hc\.fn': expected shape "
                                                       r"\[8, 256\] \(from hc_mult=2.*got \[24, 512\]"),
    "missing": (dict(tensor_edit=_drop("model.layers.3.self_attn.compressor.indexer.kv_norm.weight")),
                r"tensor 'model\.layers\.3\.self_attn\.compressor\.indexer\.kv_norm\.weight' is missing"),
    "shape": (dict(tensor_edit=_reshape("model.layers.2.self_attn.o_b_proj.weight")),
              r"model\.safetensors: tensor 'model\.layers\.2\.self_attn\.o_b_proj\.weight': expected shape "
              r"\[128, 64\], got \[127, 64\]"),
    "dtype": (dict(tensor_edit=_retype("model.layers.4.self_attn.sinks", np.int32)),
              r"tensor 'model\.layers\.4\.self_attn\.sinks': expected dtype one of \[.*'BF16'\], got I32"),
    "int_dtype": (dict(tensor_edit=_retype("model.layers.0.mlp.gate.tid2eid", np.float32)),
                  r"tensor 'model\.layers\.0\.mlp\.gate\.tid2eid': expected dtype one of \['I64', 'I32'\], got F32"),
    "tid2eid_range": (dict(tensor_edit=_bad_tid2eid), r"tid2eid': expert ids must lie in \[0, 16\)"),
}


@pytest.mark.parametrize("case", sorted(BAD_CHECKPOINTS))
def test_bad_checkpoint_raises_and_leaves_nothing(tmp_path, tiny, case):
    edits, message = BAD_CHECKPOINTS[case]
    src = export_checkpoint_variant(tiny.checkpoint, tmp_path / "src", **edits)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(ExportError, match=message):
        export(src, out_dir / "model.onnx")
    assert list(out_dir.iterdir()) == []


def test_truncated_safetensors(tmp_path, tiny):
    src = export_checkpoint_variant(tiny.checkpoint, tmp_path / "src")
    path = os.path.join(src, "model.safetensors")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 100)
    with pytest.raises(ExportError, match=r"model\.safetensors: tensor '.*': data range .*\(truncated\?\)"):
        export(src, tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("kwargs, message", [
    (dict(source="tinyy"), r"SOURCE 'tinyy': expected a Hugging Face DeepSeek-V4 checkpoint directory .*tiny, "
                           r"flash-2layer, pro-2layer.*no such directory"),
    (dict(opset=16), r"opset: expected 17\.\.23, got 16"),
    (dict(dtype="float16"), r"dtype: expected one of \['auto', 'bfloat16', 'float32'\], got 'float16'"),
    (dict(batch=0), r"batch: expected a positive integer, got 0"),
    (dict(max_seq_len=0), r"max_seq_len: expected a positive integer, got 0"),
    (dict(config_overrides={"num_experts_per_tok": 20}), r"'num_experts_per_tok': expected <= n_routed_experts "
                                                         r"\(16\), got 20"),
])
def test_bad_options_raise(tmp_path, kwargs, message):
    kwargs = {"source": "tiny", **kwargs}
    with pytest.raises(ExportError, match=message):
        export(kwargs.pop("source"), tmp_path / "model.onnx", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_source_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match=r"empty/config\.json: missing"):
        export(tmp_path / "empty", tmp_path / "a.onnx")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ExportError, match=r"file\.txt'.*got a file, not a directory"):
        export(tmp_path / "file.txt", tmp_path / "a.onnx")
    assert not (tmp_path / "a.onnx").exists()


def test_failure_mid_write_keeps_previous_output(tmp_path, monkeypatch):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"previous")
    real_get = export_weights.RandomWeights.get
    calls = []

    def failing_get(self, name):
        calls.append(name)
        if len(calls) > 40:
            raise ExportError("simulated failure")
        return real_get(self, name)

    monkeypatch.setattr(export_weights.RandomWeights, "get", failing_get)
    with pytest.raises(ExportError, match="simulated"):
        export("tiny", out, save_checkpoint=tmp_path / "ckpt")
    assert out.read_bytes() == b"previous"
    assert _leftovers(tmp_path) == [] and list((tmp_path / "ckpt").iterdir()) == []
