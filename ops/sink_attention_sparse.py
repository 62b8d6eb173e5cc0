"""CSA attention: shared window entries plus each query's top-k compressed entries, one softmax with
the per-head sink. Serves ``tide.SparseSinkAttention``.

The entry list of query s is ``[kv (N shared) ; its k picks]``. Pick ``w`` is the compressed row
``entries[w - start_pos // ratio]`` when ``w >= start_pos // ratio`` (a candidate of this call) and
``cache[w]`` otherwise; invalid picks are masked. The kernel gathers the picked rows straight into
its entry tiles: no ``[B, S, k, Dh]`` gather is materialized. The LightningIndexer returns its picks
sorted by score with the invalid ones last, so the skipped-tile range cuts them off. Same kernel
body as ``sink_attention`` (``sink_attention.build`` with ``sparse``), same target schedules, same
precision (float32 reads and accumulation; int64 pick indices, bool flags).
"""

from __future__ import annotations

import numpy as np

from . import kernel, sink_attention


@kernel.builder
def prim_func(batch: int, seq: int, heads: int, head_dim: int, n_kv: int, top_k: int, cache_rows: int,
              new_rows: int, ratio: int, scale: float, head_block: int | None = None, entry_block: int = 16,
              splits: int = 1, name: str = "tide_sparse_sink_attention"):
    """The unscheduled kernel for ``q [B,S,H,Dh]``, ``kv [B,N,Dh]``, ``kv_bias [B,S,N]``,
    ``cache [B,C,Dh]``, ``entries [B,nb,Dh]``, ``indices``/``valid [B,S,k]``, ``start_pos [B]``,
    ``sinks [H]`` -> ``out [B,S,H,Dh]``."""
    head_block = head_block or sink_attention.default_head_block(heads)
    sparse = {"top_k": top_k, "cache_rows": cache_rows, "new_rows": new_rows, "ratio": ratio}
    return sink_attention.build(name, batch, seq, heads, head_dim, n_kv, scale, head_block, entry_block, splits,
                                 sparse)


def gather_picks(cache, entries, indices, start_pos, ratio: int) -> np.ndarray:
    """The picked rows ``[B, S, k, Dh]`` (the ONNX body's Where over two GatherNDs)."""
    base = (np.asarray(start_pos) // ratio)[:, None, None]
    new_row = np.clip(indices - base, 0, entries.shape[1] - 1)
    rows = np.arange(indices.shape[0])[:, None, None]
    from_new = entries[rows, new_row]
    from_old = cache[rows, np.clip(indices, 0, cache.shape[1] - 1)]
    return np.where((indices >= base)[..., None], from_new, from_old)


def reference(q, kv, kv_bias, cache, entries, indices, valid, start_pos, sinks, ratio: int,
              scale: float) -> np.ndarray:
    """float64, following the exporter's body: one softmax over window logits, pick logits and the
    sink."""
    q, kv, kv_bias, cache, entries, sinks = (np.asarray(a, np.float64)
                                             for a in (q, kv, kv_bias, cache, entries, sinks))
    picked = gather_picks(cache, entries, np.asarray(indices), start_pos, ratio)
    win = np.einsum("bshd,bnd->bshn", q, kv) * scale + kv_bias[:, :, None, :]
    sel = np.einsum("bshd,bskd->bshk", q, picked) * scale + np.where(valid, 0.0, -np.inf)[:, :, None, :]
    sink = np.broadcast_to(sinks[None, None, :, None], win.shape[:3] + (1,))
    full = np.concatenate([win, sel, sink], axis=-1)
    full = np.exp(full - full.max(axis=-1, keepdims=True))
    probs = full / full.sum(axis=-1, keepdims=True)
    n = kv.shape[1]
    return (np.einsum("bshn,bnd->bshd", probs[..., :n], kv)
            + np.einsum("bshk,bskd->bshd", probs[..., n:-1], picked))


def cost(batch: int, seq: int, heads: int, head_dim: int, n_kv: int, top_k: int, itemsize: int = 4) -> dict:
    """As ``sink_attention.cost`` over ``n_kv + top_k`` entries per query; the picks are read once
    per query plus their indices and flags."""
    dense = sink_attention.cost(batch, seq, heads, head_dim, n_kv + top_k, itemsize=itemsize)
    picks = batch * seq * top_k * (head_dim * itemsize + 9)
    return {"flops": dense["flops"], "bytes": dense["bytes"] - batch * top_k * head_dim * itemsize + picks}


def relax_convert(bb, inputs, attrs, *, choose, report, model_dtype="float32"):
    """``tide.SparseSinkAttention(q, kv, kv_bias, cache, entries, indices, valid, start_pos, sinks)``
    -> one call of this kernel, blocked as the target chooses (a target variant, e.g. CUDA's
    tensor-core prefill, is tagged for its rule)."""
    from tvm import relax

    q, kv, kv_bias, cache, entries, indices, valid, start_pos, sinks = inputs
    B, S, H, D = sink_attention.static_shape(q, "SparseSinkAttention q")
    N = sink_attention.static_shape(kv, "SparseSinkAttention kv")[1]
    C = sink_attention.static_shape(cache, "SparseSinkAttention cache")[1]
    E = sink_attention.static_shape(entries, "SparseSinkAttention entries")[1]
    K = int(indices.ty.shape[-1])
    ratio = int(attrs["ratio"])
    scale = float(attrs["scale"])
    cfg = choose("sink_attention", batch=B, seq=S, heads=H, head_dim=D, entries=N + K, model_dtype=model_dtype)
    variant = cfg.pop("variant", "")
    name = f"tide_sparse_sink_attention_b{B}s{S}h{H}d{D}n{N}k{K}c{C}e{E}r{ratio}" + (f"_{variant}" if variant else "")
    func = prim_func(B, S, H, D, N, K, C, E, ratio, scale, name=name, **cfg)
    gv = kernel.add(bb, func, name, "sink_attention_sparse", batch=B, seq=S, heads=H, head_dim=D, n_kv=N,
                    scale=scale, top_k=K, cache_rows=C, new_rows=E, ratio=ratio, variant=variant,
                    **cost(B, S, H, D, N, K))
    report.add(name, f"tide.SparseSinkAttention [B={B} S={S} H={H} Dh={D}, {N} shared + top-{K} of {C}]")
    args = [q, kv, kv_bias, cache, entries, indices, valid, start_pos, sinks]
    return relax.call_tir(gv, args, out_ty=relax.TensorType((B, S, H, D), "float32"))
