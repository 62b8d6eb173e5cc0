"""tide's MoE kernels (routers, permutation, grouped SwiGLU GEMMs, combine) against their float64
references and against transformers' DeepSeek-V4 modules, built for the CPU and run with TVM's
runtime; their CUDA builds compiled with nvcc; and the tiny V4 model compiled with them against
onnxruntime."""

from __future__ import annotations

import os
import shutil
import subprocess

import ml_dtypes
import numpy as np
import pytest
import torch
import tvm
from transformers import DeepseekV4Config
from transformers.models.deepseek_v4.modeling_deepseek_v4 import (DeepseekV4Experts, DeepseekV4HashRouter,
                                                                  DeepseekV4MLP, DeepseekV4TopKRouter)

from tide.compiler.schedule import schedule_kernel
from tide.ops import moe_down, moe_experts, moe_gate_up, moe_permute, moe_shared, router, router_hash, router_scores
from tide.ops.kernel import tag
from tide.targets import get
from tide.targets.cuda.kernels import moe_grouped_mma

FLASH_D, FLASH_F = 4096, 2048
PRO_D, PRO_F = 7168, 3072


def _scheduled(kind: str, funcs: dict):
    """name -> tagged PrimFunc, scheduled by target ``kind``'s rules; returns (IRModule, TVM target)."""
    target = get(kind)
    tvm_target = target.tvm_target(None, target.parse_archs(None))
    return tvm.IRModule({n: schedule_kernel(f, target, tvm_target, n).with_attr("global_symbol", n)
                         for n, f in funcs.items()}), tvm_target


def _build(funcs: dict):
    """name -> tagged PrimFunc, scheduled for this CPU, compiled; returns name -> callable."""
    mod, target = _scheduled("cpu", funcs)
    lib = tvm.compile(mod, target=target)
    return {n: lib[n] for n in funcs}


def _tensor(a):
    return tvm.runtime.tensor(np.ascontiguousarray(a), tvm.cpu())


def _config(dim, inter, experts, top_k, limit=10.0, vocab=64):
    return DeepseekV4Config(hidden_size=dim, moe_intermediate_size=inter, n_routed_experts=experts,
                            num_experts_per_tok=top_k, swiglu_limit=limit, vocab_size=vocab, num_hidden_layers=1,
                            routed_scaling_factor=1.5)


# ---------------------------------------------------------------------------------------------
# routing patterns


def _distinct(rng, tokens, top_k, pool):
    return np.stack([rng.choice(pool, top_k, replace=False) for _ in range(tokens)]).astype(np.int64)


def _routing(kind, rng, tokens, top_k, experts):
    if kind == "random":
        return _distinct(rng, tokens, top_k, experts)
    if kind == "empty_experts":  # the upper half of the experts gets no token
        return _distinct(rng, tokens, top_k, max(top_k, experts // 2))
    if kind == "one_expert":  # every token's first choice is the same expert
        others = [e for e in range(experts) if e != experts - 2]
        return np.concatenate([np.full((tokens, 1), experts - 2, np.int64),
                               _distinct(rng, tokens, top_k - 1, others)], axis=1)
    if kind == "repeats":  # hash tables may list an expert twice for a token
        return rng.integers(0, experts, (tokens, top_k)).astype(np.int64)
    raise ValueError(kind)


# ---------------------------------------------------------------------------------------------
# permutation


@pytest.mark.parametrize("tokens,top_k,experts,kind", [
    (7, 3, 8, "random"), (5, 2, 9, "empty_experts"), (11, 3, 6, "one_expert"), (1, 6, 16, "random"),
    (4, 4, 5, "repeats"), (13, 1, 3, "one_expert")])
def test_permutation_groups_tokens_by_expert(tokens, top_k, experts, kind):
    rng = np.random.default_rng(tokens * 100 + experts)
    indices = _routing(kind, rng, tokens, top_k, experts)
    weights = rng.random((tokens, top_k)).astype(np.float32) + 0.1
    block = moe_experts.block_rows(tokens, top_k, experts)
    fn = _build({"perm": tag(moe_permute.prim_func(tokens, top_k, experts, block, name="perm"), "moe_permute")})["perm"]
    want = moe_permute.reference(indices, weights, experts, block)
    got = [_tensor(np.full(w.shape, 99, w.dtype)) for w in want]  # poisoned: every element must be written
    fn(_tensor(indices), _tensor(weights), *got)
    got = [g.numpy() for g in got]
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    row_token, row_weight, tile_expert, num_tiles, slot = got
    counts = np.bincount(indices.reshape(-1), minlength=experts)
    assert num_tiles[0] == sum(-(-c // block) for c in counts)  # no tile for an expert without tokens
    np.testing.assert_array_equal(row_token[slot], np.arange(tokens)[:, None].repeat(top_k, 1))
    np.testing.assert_array_equal(row_weight[slot], weights)
    np.testing.assert_array_equal(tile_expert[slot // block], indices)
    assert len(np.unique(slot)) == tokens * top_k


# ---------------------------------------------------------------------------------------------
# routed experts


def _expert_weights(rng, experts, dim, inter, limit):
    """Scaled so that |g| and |u| often exceed the SwiGLU limit (both clamps active)."""
    gate_up = (rng.standard_normal((experts, 2 * inter, dim), dtype=np.float32) * (2.5 * limit / np.sqrt(dim)))
    down = rng.standard_normal((experts, dim, inter), dtype=np.float32) / np.float32(np.sqrt(inter))
    return gate_up.astype(np.float32), down


def _run_experts(x, weights, indices, gate_up, down, limit, packed=None, layout="panel", tile_rows=None,
                 col_blocks=(0, 0)):
    tokens, dim = x.shape
    top_k, experts, inter = indices.shape[1], gate_up.shape[0], gate_up.shape[1] // 2
    funcs, _, max_tiles, rows = moe_experts.kernels(tokens, top_k, experts, dim, inter, limit, layout=layout,
                                                    weight_dtype=str(gate_up.dtype), tile_rows=tile_rows,
                                                    col_blocks=col_blocks)
    fns = [f for f in _build(dict(funcs)).values()]
    packed = packed or (moe_gate_up.pack(gate_up, layout, col_blocks[0]), moe_down.pack(down, layout, col_blocks[1]))
    perm = [_tensor(np.zeros(s, d)) for s, d in [((rows,), np.int32), ((rows,), np.float32),
                                                  ((max_tiles,), np.int32), ((1,), np.int32),
                                                  ((tokens, top_k), np.int32)]]
    h, o = _tensor(np.zeros((rows, inter), np.float32)), _tensor(np.zeros((rows, dim), np.float32))
    y = _tensor(np.zeros((tokens, dim), np.float32))
    fns[0](_tensor(indices), _tensor(weights), *perm)
    fns[1](_tensor(x), _tensor(packed[0]), *perm[:4], h)
    fns[2](h, _tensor(packed[1]), perm[2], perm[3], o)
    fns[3](o, perm[4], y)
    return y.numpy(), [p.numpy() for p in perm], h.numpy(), o.numpy()


def _transformers_experts(x, weights, indices, gate_up, down, limit):
    experts, inter, dim = gate_up.shape[0], gate_up.shape[1] // 2, gate_up.shape[2]
    module = DeepseekV4Experts(_config(dim, inter, experts, indices.shape[1], limit)).eval()
    with torch.no_grad():
        module.gate_up_proj.copy_(torch.from_numpy(gate_up))
        module.down_proj.copy_(torch.from_numpy(down))
        return module(torch.from_numpy(x), torch.from_numpy(indices), torch.from_numpy(weights)).numpy()


def _check_experts(x, weights, indices, gate_up, down, limit, packed=None, rtol=2e-5, layout="panel",
                   tile_rows=None, col_blocks=(0, 0)):
    """The chain against float64 references (per kernel and whole) and transformers; bfloat16
    weights are compared with the references computed on the same rounded weights in float64."""
    got, (row_token, row_weight, tile_expert, num_tiles, _), h, o = _run_experts(
        x, weights, indices, gate_up, down, limit, packed, layout, tile_rows, col_blocks)
    gate_up, down = gate_up.astype(np.float32), down.astype(np.float32)  # bfloat16 values exactly
    block = tile_rows or moe_experts.block_rows(*indices.shape, gate_up.shape[0])
    used = int(num_tiles[0]) * block
    h_ref = moe_gate_up.reference(x, row_token, row_weight, tile_expert, num_tiles, gate_up, limit, block)
    np.testing.assert_allclose(h[:used], h_ref[:used], rtol=rtol, atol=rtol * np.abs(h_ref).max())
    o_ref = moe_down.reference(h_ref, tile_expert, num_tiles, down, block)
    np.testing.assert_allclose(o[:used], o_ref[:used], rtol=rtol, atol=rtol * np.abs(o_ref).max())
    want = moe_experts.function_reference(x, weights, indices, gate_up, down, limit)
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)
    hf = _transformers_experts(x, weights, indices, gate_up, down, limit)
    np.testing.assert_allclose(got, hf, rtol=rtol, atol=rtol * scale)
    return h_ref[:used]


@pytest.mark.parametrize("tokens,top_k,experts,dim,inter,kind", [
    (7, 3, 8, 64, 32, "random"),          # prefill tiles, 21 rows: not a multiple of the tile
    (10, 2, 12, 48, 16, "empty_experts"),  # half of the experts never read
    (9, 2, 6, 64, 48, "one_expert"),       # every token on one expert (several tiles of it)
    (5, 3, 4, 32, 16, "repeats"),          # an expert twice for one token
    (1, 4, 16, 128, 64, "random"),         # decode: 1-row tiles, 4 of 16 experts active
    (3, 4, 16, 128, 64, "one_expert"),     # batched decode sharing an expert
    (5, 3, 8, 24, 40, "random"),           # widths that are no multiple of the vector or column block
])
def test_routed_experts(tokens, top_k, experts, dim, inter, kind):
    rng = np.random.default_rng(tokens * 1000 + dim)
    limit = 1.5
    x = rng.standard_normal((tokens, dim), dtype=np.float32)
    indices = _routing(kind, rng, tokens, top_k, experts)
    weights = (rng.random((tokens, top_k)) + 0.1).astype(np.float32)
    gate_up, down = _expert_weights(rng, experts, dim, inter, limit)
    h = _check_experts(x, weights, indices, gate_up, down, limit)
    assert (h != 0).any()


@pytest.mark.parametrize("tokens,top_k,experts,dim,inter", [(1, 4, 16, 128, 64), (7, 3, 8, 64, 32),
                                                             (32, 6, 8, 128, 64)])
def test_routed_experts_with_the_cpu_choice(tokens, top_k, experts, dim, inter):
    """The CPU target's choice for this machine (panel column blocks sized to its vectors, 6-row
    prefill tiles) against the references: the packing and the kernels agree on the blocks."""
    import tvm

    from tide.compiler.substitute import cpu_features
    from tide.targets.cpu.moe import choose_moe_gemm

    host = tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()})
    cfg = choose_moe_gemm(constant=True, block_rows=moe_experts.block_rows(tokens, top_k, experts),
                          features=cpu_features(host))
    assert cfg["layout"] == "panel" and cfg["block_rows"] == (1 if tokens * top_k <= experts else 6)
    rng = np.random.default_rng(tokens + dim)
    limit = 1.5
    x = rng.standard_normal((tokens, dim), dtype=np.float32)
    indices = _routing("random", rng, tokens, top_k, experts)
    weights = (rng.random((tokens, top_k)) + 0.1).astype(np.float32)
    gate_up, down = _expert_weights(rng, experts, dim, inter, limit)
    h = _check_experts(x, weights, indices, gate_up, down, limit, tile_rows=cfg["block_rows"],
                       col_blocks=(cfg["gate_up_block"], cfg["down_block"]))
    assert (h != 0).any()


@pytest.mark.parametrize("layout", ["panel", "rows"])
@pytest.mark.parametrize("weight_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("tokens,top_k,experts,dim,inter,kind", [
    (7, 3, 8, 64, 32, "random"),        # prefill tiles
    (1, 4, 16, 128, 64, "random"),      # decode: 1-row tiles
    (5, 3, 8, 24, 40, "one_expert"),    # widths that are no multiple of the vector or any column block
    (4, 2, 12, 48, 18, "empty_experts"),
])
def test_routed_experts_layouts_and_dtypes(tokens, top_k, experts, dim, inter, kind, weight_dtype, layout):
    rng = np.random.default_rng(tokens * 7 + inter)
    limit = 1.5
    x = rng.standard_normal((tokens, dim), dtype=np.float32)
    indices = _routing(kind, rng, tokens, top_k, experts)
    weights = (rng.random((tokens, top_k)) + 0.1).astype(np.float32)
    gate_up, down = _expert_weights(rng, experts, dim, inter, limit)
    if weight_dtype == "bfloat16":
        gate_up, down = gate_up.astype(ml_dtypes.bfloat16), down.astype(ml_dtypes.bfloat16)
    _check_experts(x, weights, indices, gate_up, down, limit, layout=layout)


@pytest.mark.parametrize("layout", ["panel", "rows"])
def test_inactive_experts_are_never_read(layout):
    """Experts without tokens hold NaN weights: any read of them would poison the output."""
    rng = np.random.default_rng(11)
    tokens, top_k, experts, dim, inter, limit = 6, 2, 10, 64, 32, 1.5
    x = rng.standard_normal((tokens, dim), dtype=np.float32)
    indices = _routing("empty_experts", rng, tokens, top_k, experts)
    weights = (rng.random((tokens, top_k)) + 0.1).astype(np.float32)
    gate_up, down = _expert_weights(rng, experts, dim, inter, limit)
    inactive = np.setdiff1d(np.arange(experts), indices)
    assert len(inactive) >= experts // 2
    poisoned_gate_up, poisoned_down = gate_up.copy(), down.copy()
    poisoned_gate_up[inactive], poisoned_down[inactive] = np.nan, np.nan
    packed = (moe_gate_up.pack(poisoned_gate_up, layout), moe_down.pack(poisoned_down, layout))
    _check_experts(x, weights, indices, gate_up, down, limit, packed, layout=layout)


@pytest.fixture(scope="module")
def flash_experts():
    """3 experts of V4-Flash's size (D 4096, F 2048), packed once."""
    rng = np.random.default_rng(7)
    limit = 10.0
    gate_up, down = _expert_weights(rng, 3, FLASH_D, FLASH_F, limit)
    return limit, gate_up, down, (moe_gate_up.pack(gate_up), moe_down.pack(down))


@pytest.mark.parametrize("tokens,top_k", [(1, 2), (4, 2)], ids=["decode", "prefill"])
def test_routed_experts_flash_dims(flash_experts, tokens, top_k):
    limit, gate_up, down, packed = flash_experts
    rng = np.random.default_rng(tokens)
    x = rng.standard_normal((tokens, FLASH_D), dtype=np.float32)
    indices = _routing("one_expert", rng, tokens, top_k, 3)
    weights = (rng.random((tokens, top_k)) + 0.1).astype(np.float32)
    _check_experts(x, weights, indices, gate_up, down, limit, packed, rtol=5e-5)


def test_routed_experts_flash_dims_bf16_rows(flash_experts):
    """Decode at V4-Flash dims on bfloat16 weights read as stored (the parameter path)."""
    limit, gate_up, down, _ = flash_experts
    rng = np.random.default_rng(21)
    x = rng.standard_normal((1, FLASH_D), dtype=np.float32)
    indices = np.array([[2, 0]], np.int64)
    weights = (rng.random((1, 2)) + 0.1).astype(np.float32)
    _check_experts(x, weights, indices, gate_up.astype(ml_dtypes.bfloat16), down.astype(ml_dtypes.bfloat16), limit,
                   rtol=5e-5, layout="rows")


def test_routed_experts_pro_dims():
    """V4-Pro's expert dims (D 7168, F 3072) with 2 experts, 3 tokens each on both (prefill tiles)."""
    rng = np.random.default_rng(5)
    limit = 10.0
    gate_up, down = _expert_weights(rng, 2, PRO_D, PRO_F, limit)
    x = rng.standard_normal((3, PRO_D), dtype=np.float32)
    indices = np.array([[0, 1], [1, 0], [0, 1]], np.int64)
    weights = (rng.random((3, 2)) + 0.1).astype(np.float32)
    _check_experts(x, weights, indices, gate_up, down, limit, rtol=5e-5)


# ---------------------------------------------------------------------------------------------
# shared expert


def _run_shared(x, gate_weight, up_weight, down_weight, limit, layout="panel"):
    tokens, dim = x.shape
    inter = gate_weight.shape[0]
    fns = list(_build(dict(moe_shared.kernels(tokens, dim, inter, limit, layout, str(gate_weight.dtype)))).values())
    gate_up, down = moe_shared.pack(gate_weight, up_weight, down_weight, layout)
    fixed = {k: _tensor(v) for k, v in moe_shared.tiles(tokens, moe_shared.block_rows(tokens)).items()}
    rows = fixed["row_token"].shape[0]
    h, o = _tensor(np.zeros((rows, inter), np.float32)), _tensor(np.zeros((rows, dim), np.float32))
    y = _tensor(np.zeros((tokens, dim), np.float32))
    fns[0](_tensor(x), _tensor(gate_up), fixed["row_token"], fixed["row_weight"], fixed["tile_expert"],
           fixed["num_tiles"], h)
    fns[1](h, _tensor(down), fixed["tile_expert"], fixed["num_tiles"], o)
    fns[2](o, fixed["slot"], y)
    return y.numpy()


def _transformers_mlp(x, gate_weight, up_weight, down_weight, limit):
    inter, dim = gate_weight.shape
    module = DeepseekV4MLP(_config(dim, 16, 4, 2, limit)).eval()
    module.gate_proj = torch.nn.Linear(dim, inter, bias=False)
    module.up_proj = torch.nn.Linear(dim, inter, bias=False)
    module.down_proj = torch.nn.Linear(inter, dim, bias=False)
    with torch.no_grad():
        for layer, w in ((module.gate_proj, gate_weight), (module.up_proj, up_weight), (module.down_proj, down_weight)):
            layer.weight.copy_(torch.from_numpy(w))
        return module(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("layout", ["panel", "rows"])
@pytest.mark.parametrize("tokens,dim,inter", [(1, 48, 20), (5, 64, 32)])
def test_shared_expert_bf16(tokens, dim, inter, layout):
    """bfloat16 weights against the float64 reference of the rounded weights."""
    rng = np.random.default_rng(tokens + inter)
    limit = 1.5
    x = rng.standard_normal((tokens, dim), dtype=np.float32)
    gate_up, down = _expert_weights(rng, 1, dim, inter, limit)
    gate_up, down = gate_up.astype(ml_dtypes.bfloat16), down.astype(ml_dtypes.bfloat16)
    gate_weight, up_weight, down_weight = gate_up[0, :inter], gate_up[0, inter:], down[0]
    got = _run_shared(x, gate_weight, up_weight, down_weight, limit, layout)
    want = moe_shared.reference(x, gate_weight, up_weight, down_weight, limit)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * np.abs(want).max())


@pytest.mark.parametrize("tokens,dim,inter", [(1, 64, 32), (7, 64, 48), (16, 128, 64), (4, 24, 40),
                                              (2, FLASH_D, FLASH_F)])
def test_shared_expert(tokens, dim, inter):
    rng = np.random.default_rng(tokens + dim)
    limit = 1.5 if dim < FLASH_D else 10.0
    x = rng.standard_normal((tokens, dim), dtype=np.float32)
    gate_up, down = _expert_weights(rng, 1, dim, inter, limit)
    gate_weight, up_weight, down_weight = gate_up[0, :inter], gate_up[0, inter:], down[0]
    got = _run_shared(x, gate_weight, up_weight, down_weight, limit)
    want = moe_shared.reference(x, gate_weight, up_weight, down_weight, limit)
    rtol = 5e-5 if dim == FLASH_D else 2e-5
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max())
    hf = _transformers_mlp(x, gate_weight, up_weight, down_weight, limit)
    np.testing.assert_allclose(got, hf, rtol=rtol, atol=rtol * np.abs(want).max())


# ---------------------------------------------------------------------------------------------
# routers


def _router_inputs(rng, tokens, dim, experts, logit_scale=3.0):
    x = rng.standard_normal((tokens, dim), dtype=np.float32)
    weight = (rng.standard_normal((experts, dim), dtype=np.float32) * np.float32(logit_scale / np.sqrt(dim)))
    return x, weight


def _scores(x, weight):
    tokens, dim = x.shape
    experts = weight.shape[0]
    fn = _build({"scores": tag(router_scores.prim_func(tokens, dim, experts, "scores"), "router_scores")})["scores"]
    out = _tensor(np.zeros((tokens, experts), np.float32))
    fn(_tensor(x), _tensor(weight.T), out)
    return out.numpy()


@pytest.mark.parametrize("tokens,dim,experts,logit_scale", [(5, 64, 16, 3.0), (1, 128, 48, 3.0),
                                                              (7, 32, 16, 60.0), (16, 96, 8, 1.0)])
def test_router_scores(tokens, dim, experts, logit_scale):
    rng = np.random.default_rng(dim + experts)
    x, weight = _router_inputs(rng, tokens, dim, experts, logit_scale)
    want = router_scores.reference(x, weight)
    np.testing.assert_allclose(_scores(x, weight), want, rtol=2e-6, atol=1e-6 * want.max())


def _select(scores, bias, top_k, scale):
    tokens, experts = scores.shape
    fn = _build({"sel": tag(router.prim_func(tokens, experts, top_k, scale, name="sel"), "router_select")})["sel"]
    w, i = _tensor(np.zeros((tokens, top_k), np.float32)), _tensor(np.full((tokens, top_k), -1, np.int64))
    fn(_tensor(scores), _tensor(bias), w, i)
    return w.numpy(), i.numpy()


def _transformers_router(x, weight, top_k, bias=None, tid2eid=None, input_ids=None):
    experts, dim = weight.shape
    config = _config(dim, 16, experts, top_k, vocab=64 if tid2eid is None else tid2eid.shape[0])
    module = (DeepseekV4TopKRouter(config) if tid2eid is None else DeepseekV4HashRouter(config)).eval()
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(weight))
        if tid2eid is None:
            module.e_score_correction_bias.copy_(torch.from_numpy(bias))
            _, w, i = module(torch.from_numpy(x))
        else:
            module.tid2eid.copy_(torch.from_numpy(tid2eid))
            _, w, i = module(torch.from_numpy(x), torch.from_numpy(input_ids))
    return w.numpy(), i.numpy()


def _by_index(weights, indices):
    """Rows of (index, weight) sorted by index: transformers' top-k order is unspecified."""
    order = np.argsort(indices, axis=-1, kind="stable")
    return np.take_along_axis(indices, order, -1), np.take_along_axis(weights, order, -1)


@pytest.mark.parametrize("tokens,dim,experts,top_k", [(6, 64, 16, 4), (1, 64, 16, 4), (5, FLASH_D, 256, 6),
                                                       (9, 32, 7, 7)])
def test_topk_router(tokens, dim, experts, top_k):
    rng = np.random.default_rng(tokens + experts)
    x, weight = _router_inputs(rng, tokens, dim, experts)
    bias = (rng.standard_normal(experts) * 0.2).astype(np.float32)
    scores = _scores(x, weight)
    got_w, got_i = _select(scores, bias, top_k, 1.5)
    want_w, want_i = router.reference(scores, bias, top_k, 1.5)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_w, want_w, rtol=1e-6)
    hf_w, hf_i = _transformers_router(x, weight, top_k, bias=bias)
    got_i, got_w = _by_index(got_w, got_i)
    hf_i, hf_w = _by_index(hf_w, hf_i)
    np.testing.assert_array_equal(got_i, hf_i)
    np.testing.assert_allclose(got_w, hf_w, rtol=2e-5)


def test_topk_router_ties_pick_lower_index():
    """Experts with identical gate rows and bias tie exactly: the lower index wins, every time."""
    rng = np.random.default_rng(3)
    tokens, dim, experts, top_k = 8, 32, 12, 3
    x, weight = _router_inputs(rng, tokens, dim, experts)
    bias = (rng.standard_normal(experts) * 0.2).astype(np.float32)
    for a, b in ((2, 9), (4, 5), (1, 11)):  # expert b duplicates expert a
        weight[b], bias[b] = weight[a], bias[a]
    scores = _scores(x, weight)
    np.testing.assert_array_equal(scores[:, [2, 4, 1]], scores[:, [9, 5, 11]])
    got_w, got_i = _select(scores, bias, top_k, 1.5)
    want_w, want_i = router.reference(scores, bias, top_k, 1.5)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_w, want_w, rtol=1e-6)
    split = 0  # rows that keep exactly one expert of a tied pair: it must be the lower one
    for row in got_i:
        for a, b in ((2, 9), (4, 5), (1, 11)):
            assert b not in row or a in row
            split += (a in row) != (b in row)
    assert split > 0
    # transformers keeps one of each tied pair (its order is unspecified): same weights either way
    hf_w, _ = _transformers_router(x, weight, top_k, bias=bias)
    np.testing.assert_allclose(np.sort(got_w, -1), np.sort(hf_w, -1), rtol=2e-5)


@pytest.mark.parametrize("tokens,dim,experts,top_k,vocab", [(6, 64, 16, 4, 50), (1, FLASH_D, 256, 6, 300),
                                                             (11, 32, 5, 3, 7)])
def test_hash_router(tokens, dim, experts, top_k, vocab):
    rng = np.random.default_rng(tokens + vocab)
    x, weight = _router_inputs(rng, tokens, dim, experts)
    tid2eid = rng.integers(0, experts, (vocab, top_k)).astype(np.int64)
    input_ids = rng.integers(0, vocab, tokens).astype(np.int64)
    scores = _scores(x, weight)
    fn = _build({"hash": tag(router_hash.prim_func(tokens, experts, top_k, vocab, 1.5, name="hash"), "router_hash")})["hash"]
    w, i = _tensor(np.zeros((tokens, top_k), np.float32)), _tensor(np.full((tokens, top_k), -1, np.int64))
    fn(_tensor(scores), _tensor(tid2eid), _tensor(input_ids), w, i)
    want_w, want_i = router_hash.reference(scores, tid2eid, input_ids, 1.5)
    np.testing.assert_array_equal(i.numpy(), want_i)
    np.testing.assert_allclose(w.numpy(), want_w, rtol=1e-6)
    hf_w, hf_i = _transformers_router(x, weight, top_k, tid2eid=tid2eid, input_ids=input_ids)
    np.testing.assert_array_equal(i.numpy(), hf_i)
    np.testing.assert_allclose(w.numpy(), hf_w, rtol=2e-5)


# ---------------------------------------------------------------------------------------------
# CUDA builds


def _cuda_kernels():
    funcs = {}
    for tokens in (1, 16):  # decode (1-row tiles) and prefill tiles
        funcs.update(moe_experts.kernels(tokens, 6, 16, 256, 128, 10.0, tag=f"s{tokens}")[0])
        for layout, dtype in (("rows", "float32"), ("rows", "bfloat16"), ("panel", "bfloat16")):
            funcs.update(moe_experts.kernels(tokens, 6, 16, 256, 128, 10.0, tag=f"s{tokens}", layout=layout,
                                             weight_dtype=dtype)[0][1:3])
        funcs[f"scores{tokens}"] = tag(router_scores.prim_func(tokens, 256, 16, f"scores{tokens}"), "router_scores")
        funcs[f"select{tokens}"] = tag(router.prim_func(tokens, 16, 6, 1.5, name=f"select{tokens}"), "router_select")
        funcs[f"hash{tokens}"] = tag(router_hash.prim_func(tokens, 16, 6, 100, 1.5, name=f"hash{tokens}"),
                                     "router_hash")
        funcs.update(moe_shared.kernels(tokens, 256, 128, 10.0))
    mma = {"layout": "rows", "weight_dtype": "bfloat16", "tile_rows": moe_grouped_mma.TILE_ROWS, "variant": "mma_bf16"}
    funcs.update(moe_experts.kernels(40, 6, 16, 256, 128, 10.0, **mma)[0])  # prefill on tensor cores
    funcs.update(moe_shared.kernels(40, 256, 128, 10.0, **mma))
    return funcs


@pytest.mark.parametrize("arch", ["sm_90", "sm_80"])
def test_cuda_kernels_compile_with_nvcc(arch, tmp_path):
    """The CUDA schedules build in TVM and the generated source compiles to a cubin (numerics need
    a GPU and are not checked here)."""
    nvcc = shutil.which("nvcc") or "/usr/local/bin/nvcc"
    assert os.path.exists(nvcc), "nvcc is needed to check the CUDA kernels"
    funcs = _cuda_kernels()
    mod, _ = _scheduled("cuda", funcs)
    exe = tvm.compile(mod, target=get("cuda").tvm_target(None, [arch]))
    source = exe.mod.imports[0].inspect_source()
    for name in funcs:
        assert f"{name}_kernel" in source
    assert source.count("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32") == 4  # routed and shared gate/up, down
    cu, cubin = tmp_path / "moe.cu", tmp_path / "moe.cubin"
    cu.write_text(source)
    proc = subprocess.run([nvcc, "-cubin", f"-arch={arch}", "-o", str(cubin), str(cu)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert cubin.stat().st_size > 0


# ---------------------------------------------------------------------------------------------
# weight layout: a compile-time choice


def _converted_calls(weights_constant, target_kind, tokens=1, weight_dtype="float32", dim=32, inter=16):
    """``tide.MoEExperts`` converted with its expert weights as constants or as function parameters:
    (kernel names of the call_tir's, the Relax ops other than call_tir in the function)."""
    from tvm import relax

    from tide.compiler import substitute

    top_k, experts = 2, 4
    rng = np.random.default_rng(0)
    gate_up, down = _expert_weights(rng, experts, dim, inter, 1.5)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((tokens, dim), "float32"))
    w = relax.Var("w", relax.TensorType((tokens, top_k), "float32"))
    i = relax.Var("i", relax.TensorType((tokens, top_k), "int64"))
    params = [x, w, i]
    if weights_constant:
        wts = [relax.const(gate_up.astype(weight_dtype)), relax.const(down.astype(weight_dtype))]
    else:
        wts = [relax.Var("gate_up", relax.TensorType(gate_up.shape, weight_dtype)),
               relax.Var("down", relax.TensorType(down.shape, weight_dtype))]
        params += wts
    with bb.function("main", params):
        with bb.dataflow():
            y = bb.emit_output(moe_experts.relax_convert(bb, [x, w, i, *wts], {"swiglu_limit": 1.5},
                                                         choose=get(target_kind).choose,
                                                         report=substitute.SubstitutionReport()))
        bb.emit_func_output(y)
    call_tir = tvm.ir.Op.get("relax.call_tir")
    names, others = [], []
    for block in bb.get()["main"].body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Call) and value.op == call_tir:
                names.append(value.args[0].name_hint)
            elif isinstance(value, relax.Call):
                others.append(value.op.name)
    return names, others


@pytest.mark.parametrize("target_kind", ["cpu", "cuda"])
def test_parameter_weights_are_read_as_stored(target_kind):
    """Weights that are parameters (memory-mapped, not folded) get the rows layout: the kernels
    read them as stored, with no layout op in the graph; constants get the target's packing."""
    names, others = _converted_calls(False, target_kind)
    assert all(n.endswith("_rows") for n in names[1:3]), names
    assert others == [], others
    names, others = _converted_calls(True, target_kind, tokens=8)
    assert all(n.endswith("_panel") for n in names[1:3]), names
    assert others == ["relax.reshape", "relax.permute_dims"] * 2  # on constants: folded at compile time
    names, _ = _converted_calls(False, target_kind, weight_dtype="bfloat16")
    assert all(n.endswith("_rows_bf16") for n in names[1:3]), names


def test_cuda_decode_reads_rows():
    """CUDA decode (1-row tiles) reads constant weights as K-contiguous rows (the GEMV layout)."""
    names, others = _converted_calls(True, "cuda", tokens=1)
    assert all(n.endswith("_rows") for n in names[1:3]) and others == [], (names, others)


def test_cuda_prefill_on_bf16_uses_tensor_cores():
    """CUDA prefill with bfloat16 weights: the tensor-core GEMMs on 16-row tiles, weights as stored;
    float32 weights keep the float32 SIMT kernels; the CPU never gets the CUDA-only kernels."""
    names, others = _converted_calls(True, "cuda", tokens=8, weight_dtype="bfloat16", dim=128, inter=64)
    assert all(n.endswith("_mma_bf16") for n in names[1:3]) and names[0].endswith("_b16"), names
    assert others == []
    names, _ = _converted_calls(True, "cuda", tokens=8, dim=128, inter=64)
    assert all(n.endswith("_panel") for n in names[1:3]), names
    names, _ = _converted_calls(True, "cpu", tokens=8, weight_dtype="bfloat16", dim=128, inter=64)
    assert all(n.endswith("_panel_bf16") for n in names[1:3]), names


def test_shared_expert_conversion_per_target():
    """SharedExpert: CUDA prefill on bfloat16 weights on tensor cores (16-row tiles), CUDA decode the
    rows GEMV, CPU packed panels."""
    from tvm import relax

    from tide.compiler import substitute

    def names(tokens, target_kind, dtype):
        rng = np.random.default_rng(1)
        dim, inter = 128, 64
        bb = relax.BlockBuilder()
        x = relax.Var("x", relax.TensorType((tokens, dim), "float32"))
        ws = [relax.const((rng.standard_normal(s, dtype=np.float32) * 0.1).astype(dtype))
              for s in ((inter, dim), (inter, dim), (dim, inter))]
        with bb.function("main", [x]):
            with bb.dataflow():
                y = bb.emit_output(moe_shared.relax_convert(bb, [x, *ws], {"swiglu_limit": 1.5},
                                                            choose=get(target_kind).choose,
                                                            report=substitute.SubstitutionReport()))
            bb.emit_func_output(y)
        return [gv.name_hint for gv, f in bb.get().functions_items() if isinstance(f, tvm.tirx.PrimFunc)]

    assert sorted(names(20, "cuda", "bfloat16")) == ["tide_shared_down_t20d128f64_mma_bf16",
                                                     "tide_shared_gate_up_t20d128f64_mma_bf16",
                                                     "tide_shared_rows_t20d128f64_b16"]
    assert "tide_shared_gate_up_t1d128f64_rows" in names(1, "cuda", "float32")
    assert "tide_shared_gate_up_t20d128f64_panel_bf16" in names(20, "cpu", "bfloat16")


def test_bad_weight_dtype_is_named():
    with pytest.raises(ValueError, match="weight 'gate_up' must be one of"):
        _converted_calls(False, "cpu", weight_dtype="float16")


# ---------------------------------------------------------------------------------------------
# tensor-core kernels' CUDA source on a CPU warp emulator


def _emulated(source: str, kernel: str, tmp_path, blocks: int):
    """``kernel`` from the generated CUDA ``source``, compiled for the host against
    tests/mma_warp_emulator.h (mma.sync emulated per the PTX fragment layouts) and launched on
    ``blocks`` thread blocks; returns call(**arrays), arrays named as the kernel's parameters."""
    import ctypes
    import re

    definition = re.search(r'extern "C" __global__ void __launch_bounds__\(\d+\) (%s\(([^)]*)\)) \{' % kernel, source)
    assert definition, f"no definition of {kernel} in the CUDA source"
    signature, params = definition[1].replace("__restrict__", ""), re.findall(r"\*\s*__restrict__\s+(\w+)",
                                                                               definition[2])
    body_start = definition.end() - 1
    depth, end = 0, body_start
    for end in range(body_start, len(source)):
        depth += {"{": 1, "}": -1}.get(source[end], 0)
        if depth == 0:
            break
    body = source[body_start:end + 1]
    asm = re.compile(r"\{\s*__asm__ __volatile__\(\s*"
                     r"\"mma\.sync\.aligned\.m16n8k16\.row\.col\.f32\.bf16\.bf16\.f32\"[^:]*"
                     r":\s*\"=f\"\(\(\(float \*\)\((?P<c>[^;]*?)\)\)\[0\]\).*?"
                     r":\s*\"r\"\(\(\(unsigned \*\)\((?P<a>[^;]*?)\)\)\[0\]\), (?:\"r\"[^,]*, ){3}"
                     r"\"r\"\(\(\(unsigned \*\)\((?P<b>[^;]*?)\)\)\[0\]\).*?\);\s*\}", re.S)
    body, count = asm.subn(lambda m: f"tide_emu_mma((const uint32_t *)({m['a']}), (const uint32_t *)({m['b']}), "
                                     f"(float *)({m['c']}));", body)
    assert count >= 1 and "__asm__" not in body
    args = ", ".join(params)
    header = os.path.join(os.path.dirname(__file__), "mma_warp_emulator.h")
    src = (f'#include "{header}"\nstatic void {signature} {body}\n'
           f'extern "C" void run({signature[signature.index("(") + 1:-1]}) '
           f'{{ tide_emu_launch({blocks}, {moe_grouped_mma.WARPS}, [=] {{ {kernel}({args}); }}); }}\n')
    cpp, so = tmp_path / f"{kernel}.cc", tmp_path / f"{kernel}.so"
    cpp.write_text(src)
    proc = subprocess.run(["g++", "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-Wall", "-Werror",
                           "-Wno-unused-variable", "-o", str(so), str(cpp)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    fn = ctypes.CDLL(str(so)).run

    def call(**arrays):
        fn(*[ctypes.c_void_p(arrays[p.removesuffix("_ptr")].ctypes.data) for p in params])
    return call


def test_tensor_core_kernels_on_a_warp_emulator(tmp_path):
    """The CUDA source of the tensor-core gate/up and down kernels, run on the host with mma.sync
    emulated lane by lane, against float64 references on bfloat16-rounded operands: checks the
    kernels' fragment indexing, tile gather and epilogue (not the GPU itself)."""
    tokens, top_k, experts, dim, inter, limit = 9, 3, 4, 192, 128, 1.5
    rng = np.random.default_rng(17)
    x = rng.standard_normal((tokens, dim), dtype=np.float32)
    indices = _routing("one_expert", rng, tokens, top_k, experts)
    weights = (rng.random((tokens, top_k)) + 0.1).astype(np.float32)
    gate_up, down = _expert_weights(rng, experts, dim, inter, limit)
    gate_up, down = gate_up.astype(ml_dtypes.bfloat16), down.astype(ml_dtypes.bfloat16)
    funcs, block, max_tiles, rows = moe_experts.kernels(tokens, top_k, experts, dim, inter, limit, layout="rows",
                                                        weight_dtype="bfloat16", tile_rows=moe_grouped_mma.TILE_ROWS,
                                                        variant="mma_bf16")
    assert block == moe_grouped_mma.TILE_ROWS
    mod, target = _scheduled("cuda", dict(funcs[1:3]))
    exe = tvm.compile(mod, target=target)
    source = exe.mod.imports[0].inspect_source()
    cols = moe_grouped_mma.COLS
    gate_up_fn = _emulated(source, f"{funcs[1][0]}_kernel", tmp_path, inter // cols * max_tiles)
    down_fn = _emulated(source, f"{funcs[2][0]}_kernel", tmp_path, dim // cols * max_tiles)
    row_token, row_weight, tile_expert, num_tiles, slot = moe_permute.reference(indices, weights, experts, block)
    h = np.full((rows, inter), np.nan, np.float32)
    gate_up_fn(x=x, w=gate_up, row_token=row_token, row_weight=row_weight, tile_expert=tile_expert,
               num_tiles=num_tiles, h=h)
    used = int(num_tiles[0]) * block
    h_ref = moe_grouped_mma.reference_gate_up(x, row_token, row_weight, tile_expert, num_tiles, gate_up, limit)
    np.testing.assert_allclose(h[:used], h_ref[:used], rtol=1e-5, atol=1e-5 * np.abs(h_ref).max())
    o = np.full((rows, dim), np.nan, np.float32)
    down_fn(h=h, w=down, tile_expert=tile_expert, num_tiles=num_tiles, o=o)
    hb = h.astype(ml_dtypes.bfloat16)  # the kernel's A operand
    o_ref = moe_down.reference(hb, tile_expert, num_tiles, down.astype(np.float64), block)
    np.testing.assert_allclose(o[:used], o_ref[:used], rtol=1e-5, atol=1e-5 * np.abs(o_ref).max())
    y = moe_experts.reference(o, slot)
    want = moe_experts.function_reference(x, weights, indices, gate_up.astype(np.float32), down.astype(np.float32),
                                          limit)
    np.testing.assert_allclose(y, want, rtol=0, atol=2e-2 * np.abs(want).max())  # bfloat16 activations


# ---------------------------------------------------------------------------------------------
# the tiny V4 model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """The tiny model compiled for the CPU (shared with tests/test_v4_spine.py), and onnxruntime's
    logits on its exported graph for a 16-token prefill from empty state and for the decode step after
    it (its inputs: the prefill's state outputs)."""
    import onnxruntime as ort

    from tide_test_models import tiny_cpu_model

    files = tiny_cpu_model(tmp_path_factory)
    session = ort.InferenceSession(files["onnx"], providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    prefill = {"input_ids": rng.integers(0, 512, (1, 16)).astype(np.int64), "start_pos": np.zeros(1, np.int64)}
    for inp in session.get_inputs()[2:]:
        prefill[inp.name] = np.zeros(inp.shape, np.float32)
    ref_prefill = session.run(None, prefill)
    decode = dict(prefill, input_ids=rng.integers(0, 512, (1, 1)).astype(np.int64),
                  start_pos=np.array([16], np.int64))
    for out, value in zip(session.get_outputs()[1:], ref_prefill[1:]):
        decode[out.name.replace("present.", "past.", 1)] = value
    return files["artifact"], {16: (prefill, ref_prefill[0]), 1: (decode, session.run(None, decode)[0])}


def test_tiny_model_with_moe_kernels_matches_onnxruntime(tiny_model):
    """The tiny model compiled with every MoE function served by these kernels, each packed expert
    weight a constant of the artifact (no layout change runs in a step), run by the C runtime
    against onnxruntime on the reference bodies: a 16-token prefill, then a decode step."""
    import tide
    from tide.compiler.artifact import read_artifact

    path, runs = tiny_model
    plan = read_artifact(path).plan
    served = {k.split("_t")[0] for k in plan.kernels if k.startswith(("tide_moe_", "tide_router_", "tide_shared_"))}
    # routed: scores, select, hash, permute, gate/up, down, combine; shared: gate/up, down, rows
    assert len(served) == 10, sorted(served)
    weighted = ("tide_moe_gate_up", "tide_moe_down", "tide_router_scores", "tide_shared_gate_up", "tide_shared_down")
    for entry in plan.entries:
        calls = [c for c in entry.calls if c.kernel.startswith(weighted)]
        assert len(calls) == 5 * 5, entry.name  # router scores, routed and shared gate/up and down, 5 layers
        for call in calls:
            kind, index = call.args[1]
            assert kind == "buf" and entry.buffers[index].kind == "weight", (entry.name, call.kernel)
    session = tide.load(path).session()
    prefill, want = runs[16]
    got = session.prefill(prefill["input_ids"], all_logits=True)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
    decode, want = runs[1]
    got = session.decode(decode["input_ids"])
    np.testing.assert_allclose(got, want[:, 0], rtol=0, atol=1e-5 * np.abs(want).max())
