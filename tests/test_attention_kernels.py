"""tide's hybrid-attention kernels (``tide.ops.sink_attention*``, their CPU and CUDA schedules in
``tide.targets.{cpu,cuda}.attention``) against their float64 references and transformers' DeepSeek-V4
modules, on seeded random data.

CPU kernels are built and run here; CUDA kernels are built and their source is compiled with nvcc
for sm_90 and sm_80 (their numerics need a GPU, which this suite does not assume).

Tolerances: float32 kernels vs float64 references, outputs of magnitude ~1, reductions over at
most a few hundred entries of 512 channels: observed errors are ~1e-6; TOL = 2e-5.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import types
import zlib

import numpy as np
import pytest
import torch
import tvm
import tvm_ffi
from tvm import relax
from transformers import DeepseekV4Config
from transformers.models.deepseek_v4 import modeling_deepseek_v4 as hf

from tide.compiler import schedule
from tide.compiler.substitute import SubstitutionReport
from tide.ops import FUNCTION_KERNELS, compressor, indexer, sink_attention, sink_attention_sparse
from tide.targets import get
from tide.targets.cpu import attention as cpu_attention
from tide.targets.cuda import attention as cuda_attention
from tide.targets.cuda.kernels import sink_attention_prefill_mma as mma

TOL = 2e-5


# ---------------------------------------------------------------------------------------------
# helpers


@functools.cache
def _target():
    return get("cpu").tvm_target()


def _cpu_scheduled(mod):
    """``mod``'s kernels scheduled by the CPU target, as the compiler's schedule stage does."""
    return schedule.schedule(mod, get("cpu"), _target())


def _run_prim(func, *arrays, out_shape):
    ex = tvm.compile(tvm.IRModule({"main": func}), target=_target())
    args = [tvm.runtime.tensor(np.ascontiguousarray(a)) for a in arrays]
    out = tvm.runtime.tensor(np.full(out_shape, np.nan, np.float32))
    ex["main"](*args, out)
    return out.numpy()


def _run_convert(module, arrays, attrs):
    """Builds a Relax function that is exactly ``module.relax_convert`` on inputs shaped like
    ``arrays`` (what the compiler does for a kept tide function) and runs it on the CPU."""
    bb = relax.BlockBuilder()
    params = [relax.Var(f"in{i}", relax.TensorType(a.shape, str(a.dtype))) for i, a in enumerate(arrays)]
    report = SubstitutionReport()
    with bb.function("main", params):
        out = module.relax_convert(bb, params, attrs, choose=get("cpu").choose, report=report)
        bb.emit_func_output(bb.emit(out))
    function = {m: f for f, m in FUNCTION_KERNELS.items()}[module.__name__.rsplit(".", 1)[1]]
    assert any(f"tide.{function} " in served for served in report.kernels.values())
    ex = tvm.compile(_cpu_scheduled(bb.get()), target=_target())
    vm = relax.VirtualMachine(ex, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in arrays])
    return tuple(o.numpy() for o in out) if isinstance(out, tvm_ffi.Array) else out.numpy()


def _window_bias(start, seq, window):
    """The exporter's sliding-window mask over [ring (W) ; this call (S)], per row ``[B, S, W+S]``."""
    start = np.asarray(start)
    bias = np.full((len(start), seq, window + seq), -np.inf, np.float32)
    for b, p0 in enumerate(start):
        ring = np.array([max(p for p in range(-window, p0) if p % window == s) for s in range(window)])
        keys = np.concatenate([ring, p0 + np.arange(seq)])
        for t in range(seq):
            pos = p0 + t
            bias[b, t, (keys >= 0) & (keys <= pos) & (keys > pos - window)] = 0.0
    return bias


def _hca_bias(start, seq, window, ratio, rows):
    """SinkAttention's HCA mask: window mask, then ``rows`` old compressed rows, then the call's
    ``seq // ratio + 1`` candidates."""
    start = np.asarray(start)
    nb = seq // ratio + 1
    comp = np.full((len(start), seq, rows + nb), -np.inf, np.float32)
    for b, p0 in enumerate(start):
        base = p0 // ratio
        for t in range(seq):
            comp[b, t, :rows][np.arange(rows) < base] = 0.0
            comp[b, t, rows:][base + np.arange(nb) < (p0 + t + 1) // ratio] = 0.0
    return np.concatenate([_window_bias(start, seq, window), comp], axis=-1)


def _indexer_picks(rng, start, seq, ratio, rows, top_k):
    """Indices/valid as LightningIndexer returns them: top-k of random scores over the visible
    entries (w < (t+1)//ratio), invisible ones at -inf, sorted, ties to the lower index."""
    B = len(start)
    idx = np.zeros((B, seq, top_k), np.int64)
    valid = np.zeros((B, seq, top_k), bool)
    for b, p0 in enumerate(start):
        for t in range(seq):
            limit = (p0 + t + 1) // ratio
            score = np.where(np.arange(rows) < limit, rng.standard_normal(rows), -np.inf)
            order = np.argsort(-score, kind="stable")[:top_k]
            idx[b, t], valid[b, t] = order, order < limit
    return idx, valid


def _eager(q, keys, bias, sinks, scale):
    """transformers' eager attention with sinks on ``q [B,S,H,D]``, shared ``keys [B,N,D]``."""
    H = q.shape[2]
    module = types.SimpleNamespace(num_key_value_groups=H, sinks=torch.from_numpy(sinks), training=False)
    key = torch.from_numpy(keys)[:, None]
    out, _ = hf.eager_attention_forward(module, torch.from_numpy(q).transpose(1, 2), key, key,
                                        torch.from_numpy(bias)[:, None], scale)
    return out.numpy()


def _rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# SinkAttention


# (batch, seq, heads, head_dim, start positions, layer kind)
DENSE_CASES = {
    "tiny-sliding-prefill": (2, 5, 8, 64, [0, 13], "sliding"),   # row 1 wraps the ring
    "tiny-sliding-decode": (2, 1, 8, 64, [3, 40], "sliding"),
    "tiny-hca-prefill": (2, 16, 8, 64, [7, 50], "hca"),          # starts off the ratio grid
    "tiny-hca-decode": (1, 1, 8, 64, [255], "hca"),
    "flash-hca-decode": (1, 1, 64, 512, [70], "hca"),
    "pro-sliding-prefill": (1, 3, 128, 512, [21], "sliding"),
}


@pytest.mark.parametrize("case", list(DENSE_CASES))
def test_sink_attention_matches_reference_and_transformers(case):
    B, S, H, D, start, kind = DENSE_CASES[case]
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    window, ratio, rows = 16, 16, 17
    bias = _window_bias(start, S, window) if kind == "sliding" else _hca_bias(start, S, window, ratio, rows)
    N = bias.shape[-1]
    q, kv, sinks = _rand(rng, B, S, H, D), _rand(rng, B, N, D), _rand(rng, H)
    scale = D ** -0.5
    got = _run_convert(sink_attention, [q, kv, bias, sinks], {"scale": scale})
    want = sink_attention.reference(q, kv, bias, sinks, scale)
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL)
    np.testing.assert_allclose(got, _eager(q, kv, bias, sinks, scale), rtol=0, atol=TOL)


@pytest.mark.parametrize("splits,entry_block", [(1, 8), (3, 8), (5, 4), (2, 16)])
def test_sink_attention_splits_and_masked_rows(splits, entry_block):
    """Split-K merges, tiles that are partly past the end, a query row that sees nothing (output
    exactly 0: only the sink), and fully masked tiles in the middle of the list."""
    rng = np.random.default_rng(splits * 100 + entry_block)
    B, S, H, D, N = 2, 3, 16, 32, 37
    q, kv, sinks = _rand(rng, B, S, H, D), _rand(rng, B, N, D), _rand(rng, H)
    bias = np.where(rng.random((B, S, N)) < 0.4, -np.inf, 0.0).astype(np.float32)
    bias[:, :, 8:24] = -np.inf
    bias[1, 2, :] = -np.inf
    func = sink_attention.prim_func(B, S, H, D, N, 0.3, entry_block=entry_block, splits=splits)
    got = _run_prim(cpu_attention.schedule_sink_attention(func), q, kv, bias, sinks, out_shape=(B, S, H, D))
    np.testing.assert_allclose(got, sink_attention.reference(q, kv, bias, sinks, 0.3), rtol=0, atol=TOL)
    assert not np.any(got[1, 2])


def test_sink_attention_unscheduled_definition():
    """The target-independent definition itself (serial loops) computes the same thing."""
    rng = np.random.default_rng(7)
    B, S, H, D, N = 1, 2, 4, 16, 11
    q, kv, sinks = _rand(rng, B, S, H, D), _rand(rng, B, N, D), _rand(rng, H)
    bias = _window_bias([4], S, 9)
    func = sink_attention.prim_func(B, S, H, D, N, 0.25, entry_block=4, splits=2)
    got = _run_prim(func, q, kv, bias, sinks, out_shape=(B, S, H, D))
    np.testing.assert_allclose(got, sink_attention.reference(q, kv, bias, sinks, 0.25), rtol=0, atol=TOL)


# ---------------------------------------------------------------------------------------------
# SparseSinkAttention


# (batch, seq, heads, head_dim, start positions, top_k, cache rows C)
SPARSE_CASES = {
    "tiny-prefill": (2, 16, 8, 64, [0, 22], 4, 65),     # k > visible entries early in row 0
    "tiny-decode": (2, 1, 8, 64, [5, 130], 4, 65),      # off-grid starts, new entry from this call
    "topk-over-visible": (1, 3, 8, 64, [9], 12, 17),    # more picks than entries: invalid tail
    "flash-decode": (1, 1, 64, 512, [41], 8, 17),
    "pro-prefill": (1, 4, 128, 512, [14], 8, 9),
}


def _sparse_inputs(case):
    B, S, H, D, start, K, C = SPARSE_CASES[case]
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    window, ratio = 16, 4
    E = S // ratio + 1
    bias = _window_bias(start, S, window)
    q, kv, sinks = _rand(rng, B, S, H, D), _rand(rng, B, window + S, D), _rand(rng, H)
    cache, entries = _rand(rng, B, C, D), _rand(rng, B, E, D)
    idx, valid = _indexer_picks(rng, start, S, ratio, C, K)
    return (q, kv, bias, cache, entries, idx, valid, np.array(start, np.int64), sinks), ratio, D ** -0.5


@pytest.mark.parametrize("case", list(SPARSE_CASES))
def test_sparse_sink_attention_matches_reference(case):
    arrays, ratio, scale = _sparse_inputs(case)
    got = _run_convert(sink_attention_sparse, list(arrays), {"ratio": ratio, "scale": scale})
    want = sink_attention_sparse.reference(*arrays, ratio, scale)
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL)


@pytest.mark.parametrize("case", ["tiny-prefill", "tiny-decode", "topk-over-visible"])
def test_sparse_sink_attention_matches_transformers_block_bias(case):
    """transformers' CSA path: eager attention over [window ; the whole compressed list] with the
    block bias that is 0 at the picks and -inf elsewhere."""
    arrays, ratio, scale = _sparse_inputs(case)
    q, kv, bias, cache, entries, idx, valid, start, sinks = arrays
    B, S = q.shape[:2]
    C, E = cache.shape[1], entries.shape[1]
    compressed = cache.copy()
    block = np.full((B, S, C), -np.inf, np.float32)
    for b in range(B):
        base = start[b] // ratio
        n_new = min(E, C - base)
        compressed[b, base:base + n_new] = entries[b, :n_new]
        for t in range(S):
            block[b, t, idx[b, t][valid[b, t]]] = 0.0
    want = _eager(q, np.concatenate([kv, compressed], 1), np.concatenate([bias, block], -1), sinks, scale)
    got = _run_convert(sink_attention_sparse, list(arrays), {"ratio": ratio, "scale": scale})
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL)


@pytest.mark.parametrize("splits", [1, 4])
def test_sparse_sink_attention_scattered_valid_picks(splits):
    """Valid flags that are not a prefix (the kernel must not rely on the indexer's order)."""
    arrays, ratio, scale = _sparse_inputs("tiny-prefill")
    q, kv, bias, cache, entries, idx, valid, start, sinks = arrays
    rng = np.random.default_rng(splits)
    valid = valid & (rng.random(valid.shape) < 0.6)
    B, S, H, D = q.shape
    func = sink_attention_sparse.prim_func(B, S, H, D, kv.shape[1], idx.shape[-1], cache.shape[1],
                                           entries.shape[1], ratio, scale, entry_block=4, splits=splits)
    got = _run_prim(cpu_attention.schedule_sink_attention(func), q, kv, bias, cache, entries, idx, valid, start, sinks,
                    out_shape=q.shape)
    want = sink_attention_sparse.reference(q, kv, bias, cache, entries, idx, valid, start, sinks, ratio, scale)
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL)


# ---------------------------------------------------------------------------------------------
# LightningIndexer


# (batch, seq, index heads, index head_dim, rope dims, start positions, top_k, cache rows C)
INDEXER_CASES = {
    "tiny-prefill": (2, 16, 16, 32, 16, [0, 22], 4, 65),      # top_k > visible early in row 0
    "tiny-decode": (2, 1, 16, 32, 16, [5, 130], 4, 65),       # off-grid starts, candidate row
    "topk-over-visible": (1, 3, 16, 32, 16, [9], 12, 17),     # more picks than visible entries
    "flash-decode": (1, 1, 64, 128, 64, [2900], 512, 1025),    # 725 visible, list merges
    "flash-prefill-short": (1, 5, 64, 128, 64, [30], 129, 129),
}


def _indexer_inputs(case):
    B, S, Hi, Di, rd, start, K, C = INDEXER_CASES[case]
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    q_lora, hidden, ratio = 48, 64, 4
    E = S // ratio + 1
    arrays = [_rand(rng, B, S, q_lora), _rand(rng, B, S, hidden), _rand(rng, B, S, rd // 2), _rand(rng, B, S, rd // 2),
              _rand(rng, B, C, Di), _rand(rng, B, E, Di), np.array(start, np.int64),
              _rand(rng, Hi * Di, q_lora) * q_lora ** -0.5, _rand(rng, Hi, hidden) * hidden ** -0.5]
    attrs = {"ratio": ratio, "head_dim": Di, "rope_dim": rd, "top_k": K, "softmax_scale": Di ** -0.5,
             "weights_scale": Hi ** -0.5}
    return arrays, attrs


def _indexer_reference(arrays, attrs):
    q_res, x, cos, sin, cache, entries, start, q_weight, weights_proj = arrays
    B, S = x.shape[:2]
    q = (q_res.astype(np.float64) @ q_weight.T.astype(np.float64)).reshape(B, S, -1, attrs["head_dim"])
    w = x.astype(np.float64) @ weights_proj.T.astype(np.float64)
    return indexer.reference(q, cos, sin, w, cache, entries, start, attrs["ratio"], attrs["rope_dim"], attrs["top_k"],
                             attrs["softmax_scale"] * attrs["weights_scale"])


@pytest.mark.parametrize("case", list(INDEXER_CASES))
def test_lightning_indexer_matches_reference(case):
    arrays, attrs = _indexer_inputs(case)
    got = _run_convert(indexer, arrays, attrs)
    want_idx, want_valid = _indexer_reference(arrays, attrs)
    np.testing.assert_array_equal(got[0], want_idx)
    np.testing.assert_array_equal(got[1], want_valid)


@pytest.mark.parametrize("case", ["tiny-prefill", "topk-over-visible", "flash-decode"])
def test_lightning_indexer_matches_transformers(case):
    """transformers' V4 RoPE on the index queries and DeepseekV4IndexerScorer, then the top-k of
    the visible entries; the kernel's valid picks must be exactly those, in score order."""
    arrays, attrs = _indexer_inputs(case)
    q_res, x, cos, sin, cache, entries, start, q_weight, weights_proj = arrays
    B, S = x.shape[:2]
    Hi, Di = weights_proj.shape[0], attrs["head_dim"]
    cfg = DeepseekV4Config(hidden_size=x.shape[-1], index_head_dim=Di, index_n_heads=Hi, q_lora_rank=q_res.shape[-1])
    scorer = hf.DeepseekV4IndexerScorer(cfg)
    with torch.no_grad():
        scorer.weights_proj.weight.copy_(torch.from_numpy(weights_proj))
        q = (torch.from_numpy(q_res) @ torch.from_numpy(q_weight).T).view(B, S, Hi, Di).transpose(1, 2)
        q = hf.apply_rotary_pos_emb(q, torch.from_numpy(cos), torch.from_numpy(sin)).transpose(1, 2)
        keys = torch.from_numpy(cache).clone()
        for b in range(B):
            base = int(start[b]) // attrs["ratio"]
            n_new = min(entries.shape[1], cache.shape[1] - base)
            keys[b, base:base + n_new] = torch.from_numpy(entries[b, :n_new])
        scores = scorer(q, keys, torch.from_numpy(x))
    got_idx, got_valid = _run_convert(indexer, arrays, attrs)
    for b in range(B):
        for t in range(S):
            visible = (int(start[b]) + t + 1) // attrs["ratio"]
            n = min(visible, attrs["top_k"])
            want = torch.topk(scores[b, t, :visible], n).indices.numpy()
            np.testing.assert_array_equal(got_idx[b, t, :n], want)
            assert got_valid[b, t, :n].all() and not got_valid[b, t, n:].any()
            np.testing.assert_array_equal(got_idx[b, t, n:], visible + np.arange(attrs["top_k"] - n))


@pytest.mark.parametrize("batch,seq,heads", [(1, 1, 16), (2, 1, 16), (1, 3, 16), (2, 8, 16), (2, 8, 24)])
def test_lightning_indexer_cpu_projections(batch, seq, heads):
    """The q and head-weight projections are plain linears that kernel substitution gives to
    tide.ops.linear on packed views of the weights (decode and prefill; 24 heads: one-vector
    panels); the picks match the float64 reference."""
    from tide.compiler.substitute import cpu_features, substitute
    from tide.targets.cpu.linear import choose_linear

    rng = np.random.default_rng(batch * 1000 + seq * 100 + heads)
    B, Di, rd, K, C, ratio, q_lora, hidden = batch, 32, 16, 6, 33, 4, 48, 64
    start = np.array([90, 13][:B], np.int64)
    arrays = [_rand(rng, B, seq, q_lora), _rand(rng, B, seq, hidden), _rand(rng, B, seq, rd // 2),
              _rand(rng, B, seq, rd // 2), _rand(rng, B, C, Di), _rand(rng, B, seq // ratio + 1, Di), start,
              _rand(rng, heads * Di, q_lora) * q_lora ** -0.5, _rand(rng, heads, hidden) * hidden ** -0.5]
    attrs = {"ratio": ratio, "head_dim": Di, "rope_dim": rd, "top_k": K, "softmax_scale": Di ** -0.5,
             "weights_scale": heads ** -0.5}
    bb = relax.BlockBuilder()
    params = [relax.Var(f"in{i}", relax.TensorType(a.shape, str(a.dtype))) for i, a in enumerate(arrays)]
    report = SubstitutionReport()
    with bb.function("main", params):
        bb.emit_func_output(bb.emit(indexer.relax_convert(bb, params, attrs, choose=get("cpu").choose, report=report)))
    weights = {"in7": arrays[7], "in8": arrays[8]}  # main's trailing parameters, as weights enter Relax
    mod = substitute(bb.get(), get("cpu"), {}, report, _target(), weights)
    tokens = B * seq
    panel = {w: choose_linear(rows=tokens, cols=w, features=cpu_features(_target()))["panel"]
             for w in (heads * Di, heads)}
    assert sorted(n for n in report.kernels if n.startswith("tide_linear_")) == sorted(
        f"tide_linear_{tokens}x{dim}x{width}_p{panel[width]}" for dim, width in ((q_lora, heads * Di), (hidden, heads)))
    assert list(weights) == [f"in7.T.panel{panel[heads * Di]}", f"in8.T.panel{panel[heads]}"]
    ex = tvm.compile(_cpu_scheduled(mod), target=_target())
    inputs = arrays[:7] + [np.ascontiguousarray(w) for w in weights.values()]
    got_idx, got_valid = (o.numpy() for o in relax.VirtualMachine(ex, tvm.cpu())["main"](
        *[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in inputs]))
    want_idx, want_valid = _indexer_reference(arrays, attrs)
    np.testing.assert_array_equal(got_idx, want_idx)
    np.testing.assert_array_equal(got_valid, want_valid)


@pytest.mark.parametrize("splits,entry_block", [(1, 4), (3, 4), (2, 8)])
def test_lightning_indexer_splits_and_ties(splits, entry_block):
    """Split lists merged, and exact ties (keys repeated) broken toward the lower entry."""
    rng = np.random.default_rng(splits)
    B, S, Hi, Di, rd, C, E, r, K = 2, 3, 16, 32, 16, 48, 1, 4, 10
    q, cos, sin, w = _rand(rng, B, S, Hi, Di), _rand(rng, B, S, rd // 2), _rand(rng, B, S, rd // 2), _rand(rng, B, S, Hi)
    cache, entries = _rand(rng, B, C, Di), _rand(rng, B, E, Di)
    cache[:, 20:40] = cache[:, 0:20]
    start = np.array([150, 77], np.int64)
    func = indexer.prim_func(B, S, Hi, Di, rd, C, E, r, K, 0.2, entry_block=entry_block, splits=splits)
    ex = tvm.compile(tvm.IRModule({"main": cpu_attention.schedule_indexer(func)}), target=_target())
    out_idx = tvm.runtime.tensor(np.full((B, S, K), -1, np.int64))
    out_valid = tvm.runtime.tensor(np.zeros((B, S, K), bool))
    ex["main"](*[tvm.runtime.tensor(a) for a in (q, cos, sin, w, cache, entries, start)], out_idx, out_valid)
    want_idx, want_valid = indexer.reference(q, cos, sin, w, cache, entries, start, r, rd, K, 0.2)
    np.testing.assert_array_equal(out_idx.numpy(), want_idx)
    np.testing.assert_array_equal(out_valid.numpy(), want_valid)
    assert (want_idx >= 20).any() and (want_idx < 20).any()


# ---------------------------------------------------------------------------------------------
# Compressor


# (batch, seq, ratio, overlap, head_dim, rope dims, cache rows, start positions)
COMPRESSOR_CASES = {
    "csa-prefill-window0": (2, 5, 4, 1, 64, 16, 65, [0, 13]),     # window 0 reaches before position 0
    "csa-decode-completes": (2, 1, 4, 1, 64, 16, 65, [3, 130]),   # row 0 completes window 0
    "hca-prefill": (1, 16, 16, 0, 64, 16, 17, [7]),               # off-grid start, two windows
    "hca-decode": (2, 1, 16, 0, 64, 16, 17, [255, 20]),
    "flash-csa-prefill": (1, 8, 4, 1, 512, 64, 1025, [61]),
    "flash-hca-decode": (1, 1, 128, 0, 512, 64, 33, [383]),
}


def _compressor_inputs(case):
    B, S, r, o, Dc, rd, C, start = COMPRESSOR_CASES[case]
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    R, F, nb, hidden = (1 + o) * r, (1 + o) * Dc, S // r + 1, 64
    arrays = [_rand(rng, B, S, hidden), np.array(start, np.int64), _rand(rng, B, R, F), _rand(rng, B, R, F),
              _rand(rng, B, C, Dc), _rand(rng, F, hidden) * hidden ** -0.5, _rand(rng, F, hidden) * hidden ** -0.5,
              _rand(rng, r, F), 1 + 0.1 * _rand(rng, Dc), _rand(rng, B, nb, rd // 2), _rand(rng, B, nb, rd // 2)]
    return arrays, {"ratio": r, "overlap": o, "head_dim": Dc, "epsilon": 1e-6, "rope_dim": rd}


@pytest.mark.parametrize("case", list(COMPRESSOR_CASES))
def test_compressor_matches_reference(case):
    arrays, attrs = _compressor_inputs(case)
    x, start, kv_state, score_state, cache, kv_weight, gate_weight, bias, norm_weight, cos, sin = arrays
    got = _run_convert(compressor, arrays, attrs)
    x64 = x.astype(np.float64)
    want = compressor.reference(x64 @ kv_weight.T, x64 @ gate_weight.T, start, kv_state, score_state, cache, bias,
                                norm_weight, cos, sin, attrs["ratio"], attrs["overlap"], attrs["epsilon"],
                                attrs["rope_dim"])
    names = ("entries", "cache_index", "cache_update", "state_index", "kv_update", "score_update")
    for name, g, w in zip(names, got, want):
        if g.dtype == np.int64:
            np.testing.assert_array_equal(g, w, err_msg=name)
        else:
            np.testing.assert_allclose(g, w, rtol=0, atol=TOL, err_msg=name)


@pytest.mark.parametrize("kind", ["heavily_compressed_attention", "compressed_sparse_attention"])
def test_compressor_matches_transformers(kind):
    """transformers' stateless compressors (a prompt from position 0, every complete window):
    the kernel's complete entries from an empty state equal their compressed entries."""
    B, S, hidden = 2, 32, 64
    cfg = DeepseekV4Config(hidden_size=hidden, head_dim=64, qk_rope_head_dim=16, q_lora_rank=48, index_n_heads=16,
                           index_head_dim=32, max_position_embeddings=256,
                           compress_rates={"compressed_sparse_attention": 4, "heavily_compressed_attention": 16})
    torch.manual_seed(0)
    module = (hf.DeepseekV4HCACompressor if kind.startswith("heavily") else hf.DeepseekV4CSACompressor)(cfg).eval()
    with torch.no_grad():
        torch.nn.init.normal_(module.position_bias)
        torch.nn.init.normal_(module.kv_norm.weight, 1.0, 0.1)
        x = torch.randn(B, S, hidden)
        positions = torch.arange(S)[None].expand(B, -1)
        want = module(x, torch.randn(B, S, 48), positions, None, 0)[0][:, 0].numpy()
        r = module.compress_rate
        nb = S // r + 1
        cos, sin = module.rotary_emb(x, position_ids=(torch.arange(nb) * r)[None].expand(B, -1), layer_type="compress")
    o = 0 if kind.startswith("heavily") else 1
    R, F, Dc = (1 + o) * r, (1 + o) * 64, 64
    arrays = [x.numpy(), np.zeros(B, np.int64), np.zeros((B, R, F), np.float32), np.zeros((B, R, F), np.float32),
              np.zeros((B, S // r + 1, Dc), np.float32), module.kv_proj.weight.detach().numpy(),
              module.gate_proj.weight.detach().numpy(), module.position_bias.detach().numpy(),
              module.kv_norm.weight.detach().numpy(), cos.numpy(), sin.numpy()]
    attrs = {"ratio": r, "overlap": o, "head_dim": Dc, "epsilon": cfg.rms_norm_eps, "rope_dim": 16}
    entries = _run_convert(compressor, arrays, attrs)[0]
    assert want.shape == (B, S // r, Dc)
    np.testing.assert_allclose(entries[:, :S // r], want, rtol=0, atol=TOL)


# ---------------------------------------------------------------------------------------------
# CUDA builds


def _nvcc():
    path = shutil.which("nvcc") or "/usr/local/bin/nvcc"
    assert os.path.exists(path), "nvcc is needed to check the CUDA kernels"
    return path


CUDA_KERNELS = {
    "dense-decode-split": lambda: sink_attention.prim_func(
        1, 1, 64, 512, 1100, 512 ** -0.5, **cuda_attention.choose_sink_attention(batch=1, seq=1, heads=64, head_dim=512, entries=1100)),
    "dense-prefill": lambda: sink_attention.prim_func(
        1, 32, 128, 512, 160, 512 ** -0.5, **cuda_attention.choose_sink_attention(batch=1, seq=32, heads=128, head_dim=512, entries=160)),
    "sparse-decode": lambda: sink_attention_sparse.prim_func(
        2, 1, 64, 512, 129, 512, 1025, 1, 4, 512 ** -0.5, **cuda_attention.choose_sink_attention(batch=2, seq=1, heads=64, head_dim=512, entries=641)),
}


CUDA_INDEXERS = {
    "indexer-decode-split": lambda: indexer.prim_func(
        1, 1, 64, 128, 64, 4097, 1, 4, 512, 0.01, **cuda_attention.choose_indexer(batch=1, seq=1, cache_rows=4097, top_k=512)),
    "indexer-prefill": lambda: indexer.prim_func(
        2, 16, 64, 128, 64, 1025, 5, 4, 512, 0.01, **cuda_attention.choose_indexer(batch=2, seq=16, cache_rows=1025, top_k=512)),
}


def _cuda_indexer(batch, seq, cache_rows, top_k):
    """The tiny model's index shape (16 heads of 32, rope 16, ratio 4) at any top-k."""
    cfg = cuda_attention.choose_indexer(batch=batch, seq=seq, cache_rows=cache_rows, top_k=top_k)
    return lambda: indexer.prim_func(batch, seq, 16, 32, 16, cache_rows, seq // 4 + 1, 4, top_k, 0.1, **cfg)


# top-k that is not a multiple of the 128 threads: thread-guarded list merges (used to fail in TVM's
# sync planner), one slot, the tiny model's top-4, top-k = every cache row (more than a short
# prefix sees), split lists merged and not
CUDA_INDEXERS |= {
    "indexer-top1-split": _cuda_indexer(1, 1, 65, 1),
    "indexer-top1": _cuda_indexer(2, 3, 7, 1),
    "indexer-tiny-top4-decode": _cuda_indexer(1, 1, 65, 4),
    "indexer-tiny-top4-prefill": _cuda_indexer(1, 32, 65, 4),
    "indexer-top-all-rows": _cuda_indexer(1, 5, 17, 17),
    "indexer-top129-split": _cuda_indexer(1, 1, 4097, 129),
    "indexer-top2500-dynamic-lists": _cuda_indexer(1, 2, 2500, 2500),
}


CUDA_COMPRESSORS = {
    "compressor-csa-prefill": lambda: compressor.prim_func(1, 32, 4, 1, 512, 1025, 64, 1e-6),
    "compressor-hca-decode": lambda: compressor.prim_func(2, 1, 128, 0, 512, 33, 64, 1e-6),
}


def _cuda_kernel(kernel):
    if kernel in CUDA_COMPRESSORS:
        return cuda_attention.schedule_compressor(CUDA_COMPRESSORS[kernel]())
    if kernel in CUDA_INDEXERS:
        return cuda_attention.schedule_indexer(CUDA_INDEXERS[kernel]())
    return cuda_attention.schedule_simt(CUDA_KERNELS[kernel]())


@pytest.mark.parametrize("kernel", list(CUDA_KERNELS) + list(CUDA_INDEXERS) + list(CUDA_COMPRESSORS))
def test_cuda_kernels_compile_with_nvcc(kernel, tmp_path):
    func = _cuda_kernel(kernel)
    exe = tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target({"kind": "cuda", "arch": "sm_90"}))
    source = exe.mod.imports[0].inspect_source()
    # Every kernel reads and writes only the function's tensors and the split-K partials: a
    # per-block scratch buffer left in global memory would be shared by all thread blocks.
    allowed = {str(p) for p in func.params}
    kernels = re.findall(r'extern "C" __global__ void (?:__launch_bounds__\(\d+\) )?\w+\(([^)]*)\)\s*\{', source)
    assert kernels
    for params in kernels:
        names = [re.sub(r"_ptr(_\d+)?$", "", p.split()[-1]) for p in params.split(",")]
        assert len(names) == len(set(names)), f"aliased kernel parameters {names}"
        assert all(n in allowed or n.startswith(("part_", "merge_")) for n in names), names
    cu = tmp_path / "kernel.cu"
    cu.write_text(source)
    for arch in ("sm_90", "sm_80"):
        res = subprocess.run([_nvcc(), "-cubin", f"-arch={arch}", "-o", str(tmp_path / f"{arch}.cubin"), str(cu)],
                             capture_output=True, text=True)
        assert res.returncode == 0, f"{arch}: {res.stderr[-2000:]}"


# ---------------------------------------------------------------------------------------------
# tensor-core prefill (targets/cuda/kernels/sink_attention_prefill_mma.py): its CUDA source on a CPU
# warp emulator


MMA_ASM = re.compile(r"\{\s*__asm__ __volatile__\(\s*"
                     r"\"mma\.sync\.aligned\.m16n8k16\.row\.col\.f32\.bf16\.bf16\.f32\"[^:]*"
                     r":\s*\"=f\"\(\(\(float \*\)\((?P<c>[^;]*?)\)\)\[0\]\).*?"
                     r":\s*\"r\"\(\(\(unsigned \*\)\((?P<a>[^;]*?)\)\)\[0\]\), (?:\"r\"[^,]*, ){3}"
                     r"\"r\"\(\(\(unsigned \*\)\((?P<b>[^;]*?)\)\)\[0\]\).*?\);\s*\}", re.S)


def _mma_source(func):
    exe = tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target({"kind": "cuda", "arch": "sm_90"}))
    return exe.mod.imports[0].inspect_source()


def _emulated_block(source: str, kernel: str, tmp_path, blocks: int, threads=None, mma_calls: int = 2):
    """``kernel`` of the generated CUDA ``source`` built for the host against
    tests/cuda_block_emulator.h (mma.sync emulated lane by lane per the PTX fragment layouts,
    __syncthreads a barrier of the block, shared memory one copy per block) and launched on
    ``blocks`` thread blocks of ``threads`` (x, y; default: its launch bound along x); returns
    call(**arrays), arrays named as the parameters."""
    import ctypes

    definition = re.search(r'extern "C" __global__ void __launch_bounds__\((\d+)\) (%s\(([^)]*)\)) \{' % kernel, source)
    assert definition, f"no definition of {kernel} in the CUDA source"
    bound, signature, param_list = definition.groups()
    threads = threads or (int(bound), 1)
    assert threads[0] * threads[1] == int(bound)
    signature = signature.replace("__restrict__", "")
    params = re.findall(r"\*\s*__restrict__\s+(\w+)", param_list)
    start = definition.end() - 1
    depth, end = 0, start
    for end in range(start, len(source)):
        depth += {"{": 1, "}": -1}.get(source[end], 0)
        if depth == 0:
            break
    body, count = MMA_ASM.subn(lambda m: f"tide_emu_mma((const uint32_t *)({m['a']}), (const uint32_t *)({m['b']}), "
                                         f"(float *)({m['c']}));", source[start:end + 1])
    assert count >= mma_calls and "__asm__" not in body
    body = re.sub(r"__shared__ alignas\((\d+)\) ", r"alignas(\1) static ", body)
    body = re.sub(r"extern __shared__ __align__\((\d+)\) uchar (\w+)\[\];", r"alignas(\1) static uchar \2[1 << 18];",
                  body)
    assert "__shared__" not in body
    header = os.path.join(os.path.dirname(__file__), "cuda_block_emulator.h")
    src = (f'#include "{header}"\nstatic void {signature} {body}\n'
           f'extern "C" void run({signature[signature.index("(") + 1:-1]}) '
           f'{{ tide_emu_launch_blocks({blocks}, {threads[0]}, {threads[1]}, [=] {{ {kernel}({", ".join(params)}); }}); }}\n')
    stem = f"{kernel}_{zlib.crc32(src.encode()):08x}"  # dlopen returns a loaded library again by its path
    cpp, so = tmp_path / f"{stem}.cc", tmp_path / f"{stem}.so"
    cpp.write_text(src)
    # generated code initializes and uses per-thread values under separate, equal thread guards;
    # kernels without mma.sync leave the emulated one unused
    proc = subprocess.run(["g++", "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-Wall", "-Werror",
                           "-Wno-unused-variable", "-Wno-unused-function", "-Wno-maybe-uninitialized", "-o", str(so),
                           str(cpp)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    fn = ctypes.CDLL(str(so)).run

    def call(**arrays):
        fn(*[ctypes.c_void_p(arrays[p.removesuffix("_ptr")].ctypes.data) for p in params])
    return call


def _p_rounding_bound(*entry_arrays):
    """The kernel's error bound against ``mma.reference``: each probability is rounded to bfloat16
    (relative 2**-9) for ``p @ kv`` while the normalizer keeps it in float32, so an output moves by
    at most ``2**-9 * max|entry|``; 5% on top for the float32 accumulation."""
    return 1.05 * 2.0 ** -9 * max(float(np.abs(mma.round_bf16(a)).max()) for a in entry_arrays)


# (batch, seq, heads, head_dim, start positions, layer kind): heads 8 (half an mma tile), 20 (two
# tiles, the second partial), V4-Flash's 64; head_dim 64 (one k16 step per warp quarter), 128 (two)
# and V4's 512 (eight, 16 accumulator tiles per warp)
MMA_DENSE_CASES = {
    "tiny-hca-prefill": (2, 16, 8, 64, [7, 50], "hca"),
    "sliding-wrap-h20-d128": (2, 5, 20, 128, [0, 13], "sliding"),
    "flash-heads-d512": (2, 3, 64, 512, [21, 3], "hca"),
}


def _mma_dense_inputs(case):
    B, S, H, D, start, kind = MMA_DENSE_CASES[case]
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    window, ratio, rows = 16, 16, 17
    bias = _window_bias(start, S, window) if kind == "sliding" else _hca_bias(start, S, window, ratio, rows)
    bias[1, 2, :] = -np.inf  # a query row that sees nothing: exactly 0 (only the sink)
    N = bias.shape[-1]
    return _rand(rng, B, S, H, D), _rand(rng, B, N, D), bias, _rand(rng, H), D ** -0.5


def _run_mma_dense(case, tmp_path, source=None):
    q, kv, bias, sinks, scale = _mma_dense_inputs(case)
    B, S, H, D = q.shape
    source = source or _mma_source(mma.prim_func(B, S, H, D, kv.shape[1], scale, name="attn_mma"))
    fn = _emulated_block(source, "attn_mma_kernel", tmp_path, B * S * -(-H // mma.MMA_M), (32, mma.WARPS))
    out = np.full(q.shape, np.nan, np.float32)
    fn(q=q, kv=kv, kv_bias=bias, sinks=sinks, out=out)
    return out, mma.reference(q, kv, bias, sinks, scale), _p_rounding_bound(kv)


@pytest.mark.parametrize("case", list(MMA_DENSE_CASES))
def test_mma_prefill_on_a_warp_emulator(case, tmp_path):
    """The tensor-core kernel's CUDA source run on the host (mma.sync emulated per the PTX fragment
    layouts) against float64 on its bfloat16 operands; the float32 answer differs more than the
    kernel does from that reference, so the test sees the kernel's own arithmetic."""
    out, want, bound = _run_mma_dense(case, tmp_path)
    np.testing.assert_allclose(out, want, rtol=0, atol=bound)
    assert not np.any(out[1, 2])
    q, kv, bias, sinks, scale = _mma_dense_inputs(case)
    assert np.abs(out - want).max() < np.abs(sink_attention.reference(q, kv, bias, sinks, scale) - want).max()


def _p_column_half_4(value):
    """The p fragment's entry column ``ks * 16 + half * 8 + ...`` read as ``ks * 16 + half * 4 + ...``."""
    def mul(e):
        if isinstance(e.a, tvm.tirx.Var) and e.a.name == "half" and isinstance(e.b, tvm.tirx.IntImm) and e.b.value == 8:
            return tvm.tirx.Mul(e.a, tvm.tirx.IntImm("int32", 4))
        return e
    return tvm_ffi.structural_map(value, [(tvm.tirx.Mul, mul)])


def _last_tile_dropped(value):
    """``max(rng[1], Select(visible, e // 32 + 1, 0))`` -> ``max(rng[1], Select(visible, e // 32, 0))``."""
    if not (isinstance(value, tvm.tirx.Max) and isinstance(value.b, tvm.tirx.Select)):
        return value
    pick = value.b
    return tvm.tirx.Max(value.a, tvm.tirx.Select(pick.condition, pick.true_value.a, pick.false_value))


# each a one-line change of the kernel, planted in its IR: a buffer and an edit of the value stored
# into it that changes exactly one of its stores; the emulated comparison must catch each
MMA_PLANTED_BUGS = {
    # acc[i] = acc[i] * exp(m - mt) -> acc[i] = acc[i]
    "no-rescale": ("acc", lambda v: v.a if isinstance(v, tvm.tirx.Mul) else v),
    "p-fragment-column": ("pa", _p_column_half_4),
    # logit = the warps' partial sums + tb[entry] -> the partial sums
    "bias-dropped": ("logit", lambda v: v.a),
    # ls[r] = 1 (the sink's own weight) -> 0
    "sink-weight-dropped": ("ls", lambda v: tvm.tirx.FloatImm("float32", 0.0)
                            if isinstance(v, tvm.tirx.FloatImm) else v),
    "tile-range-last-dropped": ("rng", _last_tile_dropped),
}


def _planted(func, buffer, edit):
    """``func`` with ``edit`` applied to the values stored into ``buffer`` (it must change one)."""
    planted = []

    def store(op):
        value = edit(op.value) if op.buffer.name == buffer else op.value
        if value.same_as(op.value):
            return op
        planted.append(op)
        return tvm.tirx.BufferStore(op.buffer, value, op.indices)

    func = tvm_ffi.structural_map(func, [(tvm.tirx.BufferStore, store)])
    assert len(planted) == 1
    return func


@pytest.mark.parametrize("bug", list(MMA_PLANTED_BUGS))
def test_mma_prefill_emulator_catches_planted_bugs(bug, tmp_path):
    case = "tiny-hca-prefill"
    q, kv, bias, sinks, scale = _mma_dense_inputs(case)
    B, S, H, D = q.shape
    func = _planted(mma.prim_func(B, S, H, D, kv.shape[1], scale, name="attn_mma"), *MMA_PLANTED_BUGS[bug])
    out, want, bound = _run_mma_dense(case, tmp_path, _mma_source(func))
    assert np.nanmax(np.abs(out - want)) > 10 * bound or np.isnan(out).any(), bug


@pytest.mark.parametrize("scattered_valid", [False, True])
def test_mma_sparse_prefill_on_a_warp_emulator(scattered_valid, tmp_path):
    """CSA: shared window entries plus each query's top-k picks gathered from the cache and this
    call's candidates; top-k above the visible count early on, scattered valid flags."""
    arrays, ratio, scale = _sparse_inputs("tiny-prefill")
    q, kv, bias, cache, entries, idx, valid, start, sinks = arrays
    if scattered_valid:
        valid = valid & (np.random.default_rng(3).random(valid.shape) < 0.6)
    B, S, H, D = q.shape
    sparse = {"top_k": idx.shape[-1], "cache_rows": cache.shape[1], "new_rows": entries.shape[1], "ratio": ratio}
    source = _mma_source(mma.prim_func(B, S, H, D, kv.shape[1], scale, sparse=sparse, name="csa_mma"))
    fn = _emulated_block(source, "csa_mma_kernel", tmp_path, B * S * -(-H // mma.MMA_M), (32, mma.WARPS))
    out = np.full(q.shape, np.nan, np.float32)
    fn(q=q, kv=kv, kv_bias=bias, cache=cache, entries=entries, indices=idx, valid=valid, start_pos=start,
       sinks=sinks, out=out)
    want = mma.reference_sparse(q, kv, bias, cache, entries, idx, valid, start, sinks, ratio, scale)
    np.testing.assert_allclose(out, want, rtol=0, atol=_p_rounding_bound(kv, cache, entries))


MMA_CUDA_BUILDS = {
    "flash-csa-prefill": lambda: mma.prim_func(1, 64, 64, 512, 192, 512 ** -0.5, sparse={
        "top_k": 512, "cache_rows": 1025, "new_rows": 17, "ratio": 4}),
    "pro-hca-prefill": lambda: mma.prim_func(1, 32, 128, 512, 160, 512 ** -0.5),
    "tiny-prefill": lambda: mma.prim_func(1, 16, 8, 64, 48, 0.125),
}


@pytest.mark.parametrize("kernel", list(MMA_CUDA_BUILDS))
def test_mma_prefill_compiles_with_nvcc(kernel, tmp_path):
    """V4-Flash and V4-Pro head counts and head_dim 512 (16 accumulator tiles per warp): nvcc for
    sm_90 and sm_80, fragments and accumulators in registers (no stack frame, no spills)."""
    cu = tmp_path / "kernel.cu"
    cu.write_text(_mma_source(MMA_CUDA_BUILDS[kernel]()))
    for arch in ("sm_90", "sm_80"):
        res = subprocess.run([_nvcc(), "-cubin", f"-arch={arch}", "-Xptxas", "-v", "-o",
                              str(tmp_path / f"{arch}.cubin"), str(cu)], capture_output=True, text=True)
        assert res.returncode == 0, f"{arch}: {res.stderr[-2000:]}"
        assert " 0 bytes stack frame, 0 bytes spill stores" in res.stderr, res.stderr[-2000:]


def _converted_kernels(module, arrays, attrs, target_kind, model_dtype):
    """Names of the PrimFuncs ``module.relax_convert`` adds for inputs shaped like ``arrays``."""
    bb = relax.BlockBuilder()
    params = [relax.Var(f"in{i}", relax.TensorType(a.shape, str(a.dtype))) for i, a in enumerate(arrays)]
    with bb.function("main", params):
        out = module.relax_convert(bb, params, attrs, choose=get(target_kind).choose, report=SubstitutionReport(),
                                   model_dtype=model_dtype)
        bb.emit_func_output(bb.emit(out))
    return [gv.name_hint for gv, f in bb.get().functions_items() if isinstance(f, tvm.tirx.PrimFunc)]


def test_prefill_on_bf16_models_uses_tensor_cores():
    """CUDA prefill of a bfloat16 model: the tensor-core kernel (dense and CSA); CUDA decode, float32
    models and the CPU keep the float32 kernels."""
    arrays, ratio, scale = _sparse_inputs("tiny-prefill")
    q, kv, bias, sinks = arrays[0], arrays[1], arrays[2], arrays[8]
    sparse_attrs = {"ratio": ratio, "scale": scale}
    for module, ins, attrs in ((sink_attention, [q, kv, bias, sinks], {"scale": scale}),
                               (sink_attention_sparse, list(arrays), sparse_attrs)):
        [name] = _converted_kernels(module, ins, attrs, "cuda", "bfloat16")
        assert name.endswith("_mma_bf16"), name
        for target_kind, dtype in (("cuda", "float32"), ("cpu", "bfloat16")):
            [name] = _converted_kernels(module, ins, attrs, target_kind, dtype)
            assert not name.endswith("_mma_bf16"), (target_kind, dtype, name)
    decode, _, _ = _sparse_inputs("tiny-decode")
    [name] = _converted_kernels(sink_attention_sparse, list(decode), sparse_attrs, "cuda", "bfloat16")
    assert not name.endswith("_mma_bf16"), name


# (batch, seq, start positions, top_k, cache rows): the tiny model's index shape at top-k 1, 4 (the
# tiny's, not a multiple of the 128 threads), every cache row (more than visible) and 129 (lists
# past one thread per slot), with and without split lists
INDEXER_EMULATED = {
    "top1-split": (1, 1, [41], 1, 65),
    "top1": (2, 3, [5, 22], 1, 7),
    "tiny-top4-prefill-split": (2, 8, [0, 22], 4, 65),
    "top-all-rows": (1, 5, [9], 17, 17),
    "top129-split": (1, 1, [8000], 129, 2100),
}


@pytest.mark.parametrize("case", list(INDEXER_EMULATED))
def test_lightning_indexer_cuda_on_a_block_emulator(case, tmp_path):
    """The indexer's CUDA schedule (both kernels when the list is split) run on the host with a
    thread per CUDA thread and __syncthreads as a block barrier: exactly the reference's picks."""
    B, S, start, K, C = INDEXER_EMULATED[case]
    Hi, Di, rd, r = 16, 32, 16, 4
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    E = S // r + 1
    q, cos, sin, w = _rand(rng, B, S, Hi, Di), _rand(rng, B, S, rd // 2), _rand(rng, B, S, rd // 2), _rand(rng, B, S, Hi)
    cache, entries, start = _rand(rng, B, C, Di), _rand(rng, B, E, Di), np.array(start, np.int64)
    cfg = cuda_attention.choose_indexer(batch=B, seq=S, cache_rows=C, top_k=K)
    func = cuda_attention.schedule_indexer(indexer.prim_func(B, S, Hi, Di, rd, C, E, r, K, 0.2, name="idx", **cfg))
    source = _mma_source(func)
    tiles = -(-C // cfg["entry_block"])
    per_split = -(-tiles // min(cfg["splits"], tiles))
    P = -(-tiles // per_split)  # entry ranges, as indexer.prim_func cuts them
    assert (P > 1) == case.endswith("split")
    arrays = dict(q=q, cos=cos, sin=sin, w=w, cache=cache, entries=entries, start_pos=start,
                  indices=np.full((B, S, K), -1, np.int64), valid=np.zeros((B, S, K), bool),
                  part_v=np.full((B, S, P, K), np.nan, np.float32), part_i=np.full((B, S, P, K), -1, np.int32))
    _emulated_block(source, "idx_kernel", tmp_path, B * S * P, mma_calls=0)(**arrays)
    if P > 1:
        _emulated_block(source, "idx_kernel_1", tmp_path, B * S, mma_calls=0)(**arrays)
    want_idx, want_valid = indexer.reference(q, cos, sin, w, cache, entries, start, r, rd, K, 0.2)
    np.testing.assert_array_equal(arrays["indices"], want_idx)
    np.testing.assert_array_equal(arrays["valid"], want_valid)



# (batch, seq, heads, head_dim, entries, sparse case or None): prefill (one kernel) and a split
# decode (the attention kernel and the four merge kernels)
SIMT_EMULATED = {
    "dense-prefill": (2, 16, 8, 64, None),
    "dense-decode-split": (1, 1, 16, 64, None),
    "sparse-prefill": (2, 16, 8, 64, "tiny-prefill"),
}


@pytest.mark.parametrize("case", list(SIMT_EMULATED))
def test_sink_attention_cuda_on_a_block_emulator(case, tmp_path):
    """The float32 CUDA schedule (``cuda.attention.schedule_simt``) run on the host, every kernel of it
    in order: the float64 reference within the float32 tolerance."""
    B, S, H, D, sparse_case = SIMT_EMULATED[case]
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    if sparse_case:
        arrays, ratio, scale = _sparse_inputs(sparse_case)
        q, kv, bias, cache, entries, idx, valid, start, sinks = arrays
        N, K = kv.shape[1], idx.shape[-1]
        cfg = cuda_attention.choose_sink_attention(batch=B, seq=S, heads=H, head_dim=D, entries=N + K)
        func = sink_attention_sparse.prim_func(B, S, H, D, N, K, cache.shape[1], entries.shape[1], ratio, scale,
                                               name="sa", **cfg)
        named = dict(cache=cache, entries=entries, indices=idx, valid=valid, start_pos=start)
        want = sink_attention_sparse.reference(*arrays, ratio, scale)
    else:
        start = [5] if S == 1 else [7, 50]
        bias = _hca_bias(start, S, 16, 4, 700) if S == 1 else _hca_bias(start, S, 16, 16, 17)
        N = bias.shape[-1]
        q, kv, sinks, scale = _rand(rng, B, S, H, D), _rand(rng, B, N, D), _rand(rng, H), D ** -0.5
        cfg = cuda_attention.choose_sink_attention(batch=B, seq=S, heads=H, head_dim=D, entries=N)
        func = sink_attention.prim_func(B, S, H, D, N, scale, name="sa", **cfg)
        named = {}
        want = sink_attention.reference(q, kv, bias, sinks, scale)
    source = _mma_source(cuda_attention.schedule_simt(func))
    P, rows = cfg["splits"], B * S * H
    assert (P > 1) == case.endswith("split")
    out = np.full(q.shape, np.nan, np.float32)
    named |= dict(q=q, kv=kv, kv_bias=bias, sinks=sinks, out=out)
    if P > 1:
        named |= dict(part_m=np.full((B, S, P, H), np.nan, np.float32), part_l=np.full((B, S, P, H), np.nan, np.float32),
                      part_acc=np.full((B, S, P, H, D), np.nan, np.float32),
                      merge_m=np.full((B, S, H), np.nan, np.float32), merge_l=np.full((B, S, H), np.nan, np.float32),
                      merge_w=np.full((B, S, H, P), np.nan, np.float32))
    # grids: the blocks each kernel's schedule binds
    grids = [B * S * (H // cfg["head_block"]) * P] + ([-(-rows // 32), -(-rows // 32), -(-rows * P // 32), rows]
                                                      if P > 1 else [])
    for i, blocks in enumerate(grids):
        _emulated_block(source, "sa_kernel" + (f"_{i}" if i else ""), tmp_path, blocks, mma_calls=0)(**named)
    np.testing.assert_allclose(out, want, rtol=0, atol=TOL)
