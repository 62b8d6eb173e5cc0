"""Benchmark cases: which kernel at which shape, how its data is made, its reference and its cost.

TVM-free (numpy only; torch only inside the eager baselines), so a machine that only runs the
pre-compiled artifacts of a bundle can rebuild every input from the case description and a seed.

A case is one tide kernel (a tide-domain ONNX function, or a standard op tide substitutes) at one
static shape. Its ONNX model is ONE node: ``inputs`` are graph inputs (activations, drawn fresh
for every rotation slot), ``weights`` are initializers (drawn once from the case seed, so the
compile-time weight packing of the kernels is folded, as in a real model). Shapes come from the
model configurations (compiler/export/config.py): ``tiny`` (the test model), ``flash`` (V4-Flash)
and ``pro`` (V4-Pro), with the routed-expert COUNT scaled down to 8 (per-expert dims are real).
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from dataclasses import dataclass, field

import numpy as np

from ..ops import (compressor, dequantize_fp4, dequantize_fp8, indexer, linear, linear_fp8, moe_down, moe_experts,
                   moe_gate_up, moe_permute, moe_shared, rmsnorm, rope, router, router_hash, router_scores,
                   sink_attention, sink_attention_sparse, topk)

# Model dimensions per shape set (compiler/export/config.py, docs/deepseek-v4.md).
DIMS = {
    "tiny": dict(hidden=128, heads=8, head_dim=64, rope_dim=16, window=16, csa_ratio=4, hca_ratio=16,
                 index_heads=16, index_dim=32, index_topk=4, q_lora=64, inter=64, experts=16, top_k=4,
                 vocab=512, limit=2.0, scaling=1.5, contexts=(64, 255), chunk=32, moe_decode=(1, 8),
                 moe_prefill=(64,)),
    "flash": dict(hidden=4096, heads=64, head_dim=512, rope_dim=64, window=128, csa_ratio=4, hca_ratio=128,
                  index_heads=64, index_dim=128, index_topk=512, q_lora=1024, inter=2048, experts=8, top_k=6,
                  vocab=129280, limit=10.0, scaling=1.5, contexts=(4096, 65536, 1 << 20), chunk=64,
                  moe_decode=(1, 8, 64), moe_prefill=(512, 4096)),
    "pro": dict(hidden=7168, heads=128, head_dim=512, rope_dim=64, window=128, csa_ratio=4, hca_ratio=128,
                index_heads=64, index_dim=128, index_topk=1024, q_lora=1536, inter=3072, experts=8, top_k=6,
                vocab=129280, limit=10.0, scaling=2.5, contexts=(4096, 65536, 1 << 20), chunk=64,
                moe_decode=(1, 8, 64), moe_prefill=(512, 4096)),
}
SHAPE_SETS = tuple(DIMS)

# Heavy cases (not in the default CPU run, ``--heavy`` adds them): 1M contexts, MoE prefill at
# real widths (512 and 4096 tokens), and every case of the ``pro`` set.
HEAVY_CONTEXT = 1 << 20
HEAVY_TOKENS = 512
# tide's generic lowering of MoEExperts is the dense function body (every token through every
# expert, unscheduled): ~130 s per call at flash widths and 512 tokens; not run from this size on.
GENERIC_MAX_MOE_TOKENS = 1024


@dataclass
class Case:
    kernel: str                 # the ops module this case measures (its cost() and reference())
    shapes: str                 # tiny | flash | pro
    phase: str                  # decode | prefill
    label: str                  # what varies within the phase (context, tokens, layer kind)
    op: str                     # ONNX op type of the one node
    domain: str                 # "tide" for tide functions, "" for standard ops
    inputs: list                # [(name, dtype, shape)] graph inputs, fresh data per rotation slot
    weights: list               # [(name, dtype, shape)] initializers, drawn once
    outputs: list               # [(name, dtype, shape)]
    attrs: dict
    params: dict = field(default_factory=dict)
    heavy: bool = False
    skip: dict = field(default_factory=dict)   # engine -> why it is not run on this case

    @property
    def name(self) -> str:
        return f"{self.kernel}/{self.shapes}/{self.phase}/{self.label}"

    @property
    def seed(self) -> int:
        return zlib.crc32(self.name.encode())

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        for key in ("inputs", "weights", "outputs"):
            d[key] = [[n, t, list(s)] for n, t, s in d[key]]
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Case":
        d = dict(d)
        for key in ("inputs", "weights", "outputs"):
            d[key] = [(n, t, tuple(s)) for n, t, s in d[key]]
        return cls(**d)


def _heavy_moe(shapes: str, tokens: int) -> bool:
    return shapes != "tiny" and tokens >= HEAVY_TOKENS


def _rand(rng, shape, scale=1.0):
    return (rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)).astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------------
# attention masks and picks (the exporter's conventions, docs/onnx-contract.md)


def _context_cases(kernel, shapes: str, million: bool = True) -> list:
    """An attention kernel's cases: decode at each context of the shape set (the 1M one heavy, or
    left out when ``million`` is false) and one prefill chunk ending at the first context."""
    d = DIMS[shapes]
    out = [kernel._case(shapes, "decode", f"ctx{c}", c - 1, 1, c >= HEAVY_CONTEXT)
           for c in d["contexts"] if million or c < HEAVY_CONTEXT]
    c = d["contexts"][0]
    out.append(kernel._case(shapes, "prefill", f"chunk{d['chunk']}@ctx{c}", c - d["chunk"], d["chunk"]))
    return out


def window_bias(start: int, seq: int, window: int) -> np.ndarray:
    """Sliding-window mask over [ring (W) ; this call (S)] for one batch row: ``[S, W+S]``."""
    slots = np.arange(window)
    ring = (start - 1) - ((start - 1 - slots) % window)   # latest position < start in each ring slot
    keys = np.concatenate([ring, start + np.arange(seq)])
    pos = start + np.arange(seq)[:, None]
    visible = (keys >= 0) & (keys <= pos) & (keys > pos - window)
    return np.where(visible, 0.0, -np.inf).astype(np.float32)


def hca_bias(start: int, seq: int, window: int, ratio: int) -> np.ndarray:
    """SinkAttention's HCA mask: the window mask, then ``start // ratio`` old compressed rows
    (all visible), then this call's ``seq // ratio + 1`` candidates (visible once complete)."""
    base, nb = start // ratio, seq // ratio + 1
    pos1 = start + np.arange(seq)[:, None] + 1
    cand = np.where(base + np.arange(nb)[None, :] < pos1 // ratio, 0.0, -np.inf)
    old = np.zeros((seq, base))
    return np.concatenate([window_bias(start, seq, window), old, cand], axis=1).astype(np.float32)


def sparse_picks(rng, start: int, seq: int, ratio: int, top_k: int):
    """LightningIndexer-like picks for one batch row: distinct visible rows ``w < (t+1)//ratio``
    (random order), invalid tail where fewer are visible."""
    idx = np.zeros((seq, top_k), np.int64)
    valid = np.zeros((seq, top_k), bool)
    for t in range(seq):
        limit = (start + t + 1) // ratio
        n = min(limit, top_k)
        idx[t, :n] = rng.choice(limit, n, replace=False) if n else []
        valid[t, :n] = True
    return idx, valid


# ---------------------------------------------------------------------------------------------
# kernel definitions


class KernelDef:
    """How one kernel is benchmarked. Subclasses give ``cases``, ``make_inputs``, ``make_weights``,
    ``reference`` (float64 outputs by name), ``cost`` (FLOPs, bytes) and ``torch_fn``."""

    name = ""
    group = ""
    # output name -> index output it is ordered by (compared after sorting both by the indices)
    paired: dict = {}

    def cases(self, shapes: str) -> list[Case]:
        raise NotImplementedError

    def make_inputs(self, case: Case, rng) -> dict:
        raise NotImplementedError

    def make_weights(self, case: Case, rng) -> dict:
        return {n: _rand(rng, s) for n, t, s in case.weights}

    def reference(self, case: Case, feeds: dict, weights: dict) -> dict:
        raise NotImplementedError

    def cost(self, case: Case, feeds: dict) -> dict:
        raise NotImplementedError

    def torch_fn(self, case: Case, weights: dict, device: str):
        """A callable feeds(torch tensors) -> tuple of outputs in case.outputs order, or None."""
        return None


class RMSNorm(KernelDef):
    name, group = "rmsnorm", "norm"

    def cases(self, shapes):
        d = DIMS[shapes]
        out = []
        for phase, rows in (("decode", 1), ("prefill", d["chunk"] * 8)):
            out.append(Case(self.name, shapes, phase, f"T{rows}", "RMSNorm", "tide",
                            [("x", "float32", (rows, d["hidden"]))], [("weight", "float32", (d["hidden"],))],
                            [("y", "float32", (rows, d["hidden"]))], {"epsilon": 1e-6}, {"rows": rows}))
        return out

    def make_inputs(self, case, rng):
        return {"x": _rand(rng, case.inputs[0][2])}

    def make_weights(self, case, rng):
        return {"weight": (1 + 0.1 * _rand(rng, case.weights[0][2])).astype(np.float32)}

    def reference(self, case, feeds, weights):
        return {"y": rmsnorm.reference(feeds["x"], weights["weight"], case.attrs["epsilon"])}

    def cost(self, case, feeds):
        rows, dim = case.inputs[0][2]
        return rmsnorm.cost(rows, dim)

    def torch_fn(self, case, weights, device):
        import torch

        w, eps = torch.from_numpy(weights["weight"]).to(device), case.attrs["epsilon"]
        return lambda x: (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w,)


class RoPEDef(KernelDef):
    """tide.RoPE on the query heads ``[1, S, H, Dh]`` with per-token tables ``[1, S, 1, rd/2]`` (the
    exporter's q and attention-output calls), at decode (one token) and a prefill chunk."""
    name, group = "rope", "attention"

    def cases(self, shapes):
        d = DIMS[shapes]
        H, Dh, rd = d["heads"], d["head_dim"], d["rope_dim"]
        out = []
        for phase, seq in (("decode", 1), ("prefill", d["chunk"])):
            table = (1, seq, 1, rd // 2)
            out.append(Case(self.name, shapes, phase, f"q-S{seq}", "RoPE", "tide",
                            [("x", "float32", (1, seq, H, Dh)), ("cos", "float32", table), ("sin", "float32", table)],
                            [], [("y", "float32", (1, seq, H, Dh))], {"rope_dim": rd}))
        return out

    def make_inputs(self, case, rng):
        angles = rng.uniform(-np.pi, np.pi, case.inputs[1][2])
        return {"x": _rand(rng, case.inputs[0][2]), "cos": np.cos(angles).astype(np.float32),
                "sin": np.sin(angles).astype(np.float32)}

    def reference(self, case, feeds, weights):
        return {"y": rope.reference(feeds["x"], feeds["cos"], feeds["sin"], case.attrs["rope_dim"])}

    def cost(self, case, feeds):
        _, seq, heads, dim = case.inputs[0][2]
        return rope.cost(seq * heads, dim, case.attrs["rope_dim"], seq)

    def torch_fn(self, case, weights, device):
        import torch

        rd = case.attrs["rope_dim"]

        def run(x, cos, sin):
            off = x.shape[-1] - rd
            pairs = x[..., off:].unflatten(-1, (rd // 2, 2))
            x0, x1 = pairs[..., 0], pairs[..., 1]
            rotated = torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], -1).flatten(-2)
            return (torch.cat([x[..., :off], rotated], -1),)
        return run


def _attention_torch(q, keys, bias, sinks, scale):
    """Eager attention with a per-head sink logit over shared keys (transformers' math)."""
    import torch

    logits = torch.einsum("bshd,bnd->bshn", q, keys) * scale + bias[:, :, None, :]
    sink = sinks[None, None, :, None].expand(*logits.shape[:3], 1)
    probs = torch.softmax(torch.cat([logits, sink], dim=-1), dim=-1)[..., :-1]
    return torch.einsum("bshn,bnd->bshd", probs, keys)


class SinkAttentionDef(KernelDef):
    """HCA layer attention: window + all compressed rows + this call's candidates."""

    name, group = "sink_attention", "attention"

    def _case(self, shapes, phase, label, start, seq, heavy=False):
        d = DIMS[shapes]
        H, D, W, r = d["heads"], d["head_dim"], d["window"], d["hca_ratio"]
        n = W + seq + start // r + seq // r + 1
        return Case(self.name, shapes, phase, label, "SinkAttention", "tide",
                    [("q", "float32", (1, seq, H, D)), ("kv", "float32", (1, n, D)),
                     ("kv_bias", "float32", (1, seq, n))],
                    [("sinks", "float32", (H,))], [("out", "float32", (1, seq, H, D))],
                    {"scale": D ** -0.5}, {"start": start}, heavy)

    def cases(self, shapes):
        return _context_cases(self, shapes)

    def make_inputs(self, case, rng):
        (_, _, qs), (_, _, ks), _ = case.inputs
        d = DIMS[case.shapes]
        bias = hca_bias(case.params["start"], qs[1], d["window"], d["hca_ratio"])
        return {"q": _rand(rng, qs), "kv": _rand(rng, ks), "kv_bias": bias[None]}

    def reference(self, case, feeds, weights):
        return {"out": sink_attention.reference(feeds["q"], feeds["kv"], feeds["kv_bias"], weights["sinks"],
                                                case.attrs["scale"])}

    def cost(self, case, feeds):
        B, S, H, D = case.inputs[0][2]
        n = case.inputs[1][2][1]
        visible = int(round(np.isfinite(feeds["kv_bias"]).sum() / (B * S)))
        return sink_attention.cost(B, S, H, D, n, visible)

    def torch_fn(self, case, weights, device):
        import torch

        sinks, scale = torch.from_numpy(weights["sinks"]).to(device), case.attrs["scale"]
        return lambda q, kv, bias: (_attention_torch(q, kv, bias, sinks, scale),)


class SparseAttentionDef(KernelDef):
    """CSA layer attention: window + the indexer's top-k compressed entries."""

    name, group = "sink_attention_sparse", "attention"

    def _case(self, shapes, phase, label, start, seq, heavy=False):
        d = DIMS[shapes]
        H, D, W, r, K = d["heads"], d["head_dim"], d["window"], d["csa_ratio"], d["index_topk"]
        C, nb = (start + seq) // r + 1, seq // r + 1
        return Case(self.name, shapes, phase, label, "SparseSinkAttention", "tide",
                    [("q", "float32", (1, seq, H, D)), ("kv", "float32", (1, W + seq, D)),
                     ("kv_bias", "float32", (1, seq, W + seq)), ("cache", "float32", (1, C, D)),
                     ("entries", "float32", (1, nb, D)), ("indices", "int64", (1, seq, K)),
                     ("valid", "bool", (1, seq, K)), ("start_pos", "int64", (1,))],
                    [("sinks", "float32", (H,))], [("out", "float32", (1, seq, H, D))],
                    {"ratio": r, "scale": D ** -0.5}, {"start": start}, heavy)

    def cases(self, shapes):
        # The per-step work does not grow past the top-k: 1M is the 64K case with a bigger cache.
        return _context_cases(self, shapes, million=False)

    def make_inputs(self, case, rng):
        d = DIMS[case.shapes]
        start, seq = case.params["start"], case.inputs[0][2][1]
        feeds = {n: _rand(rng, s) for n, t, s in case.inputs if t == "float32" and n != "kv_bias"}
        feeds["kv_bias"] = window_bias(start, seq, d["window"])[None]
        idx, valid = sparse_picks(rng, start, seq, case.attrs["ratio"], d["index_topk"])
        feeds.update(indices=idx[None], valid=valid[None], start_pos=np.array([start], np.int64))
        return feeds

    def reference(self, case, feeds, weights):
        f = feeds
        return {"out": sink_attention_sparse.reference(f["q"], f["kv"], f["kv_bias"], f["cache"], f["entries"],
                                                       f["indices"], f["valid"], f["start_pos"], weights["sinks"],
                                                       case.attrs["ratio"], case.attrs["scale"])}

    def cost(self, case, feeds):
        B, S, H, D = case.inputs[0][2]
        return sink_attention_sparse.cost(B, S, H, D, case.inputs[1][2][1], case.inputs[5][2][2])

    def torch_fn(self, case, weights, device):
        import torch

        sinks, scale, ratio = torch.from_numpy(weights["sinks"]).to(device), case.attrs["scale"], case.attrs["ratio"]

        def run(q, kv, bias, cache, entries, indices, valid, start_pos):
            base = (start_pos // ratio)[:, None, None]
            new = indices >= base
            new_row = (indices - base).clamp(0, entries.shape[1] - 1)
            b = torch.arange(q.shape[0], device=q.device)[:, None, None]
            picked = torch.where(new[..., None], entries[b, new_row], cache[b, indices])      # [B,S,k,D]
            logits = torch.einsum("bshd,bnd->bshn", q, kv) * scale + bias[:, :, None, :]
            sel = torch.einsum("bshd,bskd->bshk", q, picked) * scale
            sel = sel.masked_fill(~valid[:, :, None, :], float("-inf"))
            sink = sinks[None, None, :, None].expand(*logits.shape[:3], 1)
            probs = torch.softmax(torch.cat([logits, sel, sink], dim=-1), dim=-1)
            n = kv.shape[1]
            out = torch.einsum("bshn,bnd->bshd", probs[..., :n], kv)
            return (out + torch.einsum("bshk,bskd->bshd", probs[..., n:-1], picked),)
        return run


class IndexerDef(KernelDef):
    name, group = "indexer", "attention"

    def _case(self, shapes, phase, label, start, seq, heavy=False):
        d = DIMS[shapes]
        Hi, Di, rd, r, K = d["index_heads"], d["index_dim"], d["rope_dim"], d["csa_ratio"], d["index_topk"]
        C, nb = (start + seq) // r + 1, seq // r + 1
        return Case(self.name, shapes, phase, label, "LightningIndexer", "tide",
                    [("q_residual", "float32", (1, seq, d["q_lora"])), ("x", "float32", (1, seq, d["hidden"])),
                     ("cos", "float32", (1, seq, rd // 2)), ("sin", "float32", (1, seq, rd // 2)),
                     ("cache", "float32", (1, C, Di)), ("entries", "float32", (1, nb, Di)),
                     ("start_pos", "int64", (1,))],
                    [("q_weight", "float32", (Hi * Di, d["q_lora"])), ("weights_proj", "float32", (Hi, d["hidden"]))],
                    [("indices", "int64", (1, seq, K)), ("valid", "bool", (1, seq, K))],
                    {"ratio": r, "head_dim": Di, "rope_dim": rd, "top_k": K, "softmax_scale": Di ** -0.5,
                     "weights_scale": Hi ** -0.5}, {"start": start}, heavy)

    def cases(self, shapes):
        return _context_cases(self, shapes)

    def make_inputs(self, case, rng):
        feeds = {n: _rand(rng, s) for n, t, s in case.inputs if t == "float32"}
        feeds["start_pos"] = np.array([case.params["start"]], np.int64)
        return feeds

    def make_weights(self, case, rng):
        (_, _, qs), (_, _, ws) = case.weights
        return {"q_weight": _rand(rng, qs, qs[1] ** -0.5), "weights_proj": _rand(rng, ws, ws[1] ** -0.5)}

    def _scores(self, case, feeds, weights):
        a = case.attrs
        B, S = feeds["x"].shape[:2]
        q = (feeds["q_residual"].astype(np.float64) @ weights["q_weight"].T.astype(np.float64))
        q = q.reshape(B, S, -1, a["head_dim"])
        w = feeds["x"].astype(np.float64) @ weights["weights_proj"].T.astype(np.float64)
        return indexer.scores_reference(q, feeds["cos"], feeds["sin"], w, feeds["cache"], feeds["entries"],
                                        feeds["start_pos"], a["ratio"], a["rope_dim"],
                                        a["softmax_scale"] * a["weights_scale"])

    def reference(self, case, feeds, weights):
        scores, threshold = self._scores(case, feeds, weights)
        order = np.argsort(-scores, axis=-1, kind="stable")[..., :case.attrs["top_k"]].astype(np.int64)
        return {"indices": order, "valid": order < threshold[..., None], "indices:scores": scores}

    def cost(self, case, feeds):
        a, d = case.attrs, DIMS[case.shapes]
        B, S = case.inputs[1][2][:2]
        start = case.params["start"]
        visible = int(np.mean([(start + t + 1) // a["ratio"] for t in range(S)]))
        c = indexer.cost(B, S, d["index_heads"], a["head_dim"], visible, a["top_k"])
        proj = 2 * B * S * (d["q_lora"] * d["index_heads"] * a["head_dim"] + d["hidden"] * d["index_heads"])
        wbytes = 4 * (d["q_lora"] * d["index_heads"] * a["head_dim"] + d["hidden"] * d["index_heads"])
        return {"flops": c["flops"] + proj, "bytes": c["bytes"] + wbytes}

    def torch_fn(self, case, weights, device):
        import torch

        a = case.attrs
        wq = torch.from_numpy(weights["q_weight"]).to(device)
        wp = torch.from_numpy(weights["weights_proj"]).to(device)
        ratio, rd, k = a["ratio"], a["rope_dim"], a["top_k"]
        scale = a["softmax_scale"] * a["weights_scale"]

        def run(q_res, x, cos, sin, cache, entries, start_pos):
            B, S = x.shape[:2]
            q = (q_res @ wq.T).view(B, S, -1, a["head_dim"])
            rot = q[..., -rd:]
            x0, x1 = rot[..., 0::2], rot[..., 1::2]
            c, s = cos[:, :, None, :], sin[:, :, None, :]
            rot = torch.stack([x0 * c - x1 * s, x1 * c + x0 * s], dim=-1).flatten(-2)
            q = torch.cat([q[..., :-rd], rot], dim=-1)
            w = x @ wp.T
            keys = cache.clone()
            for b in range(B):
                base = int(start_pos[b]) // ratio
                n = min(entries.shape[1], keys.shape[1] - base)
                keys[b, base:base + n] = entries[b, :n]
            scores = (torch.relu(torch.einsum("bshd,bnd->bshn", q, keys)) * w[..., None]).sum(2) * scale
            pos = start_pos[:, None] + torch.arange(S, device=x.device)[None]
            threshold = ((pos + 1) // ratio)[..., None]
            rows = torch.arange(keys.shape[1], device=x.device)
            scores = scores.masked_fill(rows[None, None] >= threshold, float("-inf"))
            idx = torch.topk(scores, k, dim=-1).indices
            return idx, idx < threshold
        return run


class CompressorDef(KernelDef):
    name, group = "compressor", "attention"

    def _case(self, shapes, phase, kind, start, seq):
        d = DIMS[shapes]
        r, o = (d["csa_ratio"], 1) if kind == "csa" else (d["hca_ratio"], 0)
        Dc, rd, D = d["head_dim"], d["rope_dim"], d["hidden"]
        R, F, nb, n = (1 + o) * r, (1 + o) * Dc, seq // r + 1, min(seq, (1 + o) * r)
        C = (start + seq) // r + 1
        return Case(self.name, shapes, phase, f"{kind}-S{seq}@ctx{start + seq}", "Compressor", "tide",
                    [("x", "float32", (1, seq, D)), ("start_pos", "int64", (1,)),
                     ("kv_state", "float32", (1, R, F)), ("score_state", "float32", (1, R, F)),
                     ("cache", "float32", (1, C, Dc)), ("cos", "float32", (1, nb, rd // 2)),
                     ("sin", "float32", (1, nb, rd // 2))],
                    [("kv_weight", "float32", (F, D)), ("gate_weight", "float32", (F, D)),
                     ("position_bias", "float32", (r, F)), ("norm_weight", "float32", (Dc,))],
                    [("entries", "float32", (1, nb, Dc)), ("cache_index", "int64", (1, nb, 2)),
                     ("cache_update", "float32", (1, nb, Dc)), ("state_index", "int64", (1, n, 2)),
                     ("kv_update", "float32", (1, n, F)), ("score_update", "float32", (1, n, F))],
                    {"ratio": r, "overlap": o, "head_dim": Dc, "epsilon": 1e-6, "rope_dim": rd},
                    {"start": start})

    def cases(self, shapes):
        d = DIMS[shapes]
        c = d["contexts"][0]
        return [self._case(shapes, "decode", kind, c - 1, 1) for kind in ("csa", "hca")] + \
               [self._case(shapes, "prefill", "csa", c - d["chunk"], d["chunk"])]

    def make_inputs(self, case, rng):
        feeds = {n: _rand(rng, s) for n, t, s in case.inputs if t == "float32"}
        feeds["start_pos"] = np.array([case.params["start"]], np.int64)
        return feeds

    def make_weights(self, case, rng):
        (_, _, ks), (_, _, gs), (_, _, bs), (_, _, ns) = case.weights
        return {"kv_weight": _rand(rng, ks, ks[1] ** -0.5), "gate_weight": _rand(rng, gs, gs[1] ** -0.5),
                "position_bias": _rand(rng, bs), "norm_weight": (1 + 0.1 * _rand(rng, ns)).astype(np.float32)}

    def reference(self, case, feeds, weights):
        a, f, w = case.attrs, feeds, weights
        x64 = f["x"].astype(np.float64)
        got = compressor.reference(x64 @ w["kv_weight"].T, x64 @ w["gate_weight"].T, f["start_pos"], f["kv_state"],
                                   f["score_state"], f["cache"], w["position_bias"], w["norm_weight"], f["cos"],
                                   f["sin"], a["ratio"], a["overlap"], a["epsilon"], a["rope_dim"])
        return dict(zip([n for n, _, _ in case.outputs], got))

    def cost(self, case, feeds):
        a = case.attrs
        B, S, D = case.inputs[0][2]
        F = (1 + a["overlap"]) * a["head_dim"]
        c = compressor.cost(B, S, a["ratio"], a["overlap"], a["head_dim"])
        return {"flops": c["flops"] + 2 * 2 * B * S * D * F, "bytes": c["bytes"] + 4 * (2 * F * D + B * S * D)}


class RouterDef(KernelDef):
    name, group = "router", "moe"
    paired = {"weights": "indices"}

    def _case(self, shapes, phase, tokens):
        d = DIMS[shapes]
        D, E, k = d["hidden"], d["experts"], d["top_k"]
        return Case(self.name, shapes, phase, f"T{tokens}", "MoERouter", "tide",
                    [("x", "float32", (tokens, D))], [("weight", "float32", (E, D)), ("bias", "float32", (E,))],
                    [("weights", "float32", (tokens, k)), ("indices", "int64", (tokens, k))],
                    {"top_k": k, "routed_scaling_factor": d["scaling"]}, {}, _heavy_moe(shapes, tokens))

    def cases(self, shapes):
        d = DIMS[shapes]
        return [self._case(shapes, "decode", t) for t in d["moe_decode"]] + \
               [self._case(shapes, "prefill", t) for t in d["moe_prefill"]]

    def make_inputs(self, case, rng):
        return {"x": _rand(rng, case.inputs[0][2])}

    def make_weights(self, case, rng):
        (_, _, ws), (_, _, bs) = case.weights
        return {"weight": _rand(rng, ws, 3.0 / math.sqrt(ws[1])), "bias": _rand(rng, bs, 0.2)}

    def reference(self, case, feeds, weights):
        scores = router_scores.reference(feeds["x"], weights["weight"])
        w, idx = router.reference(scores, weights["bias"], case.attrs["top_k"], case.attrs["routed_scaling_factor"])
        return {"weights": w, "indices": idx, "indices:scores": scores + weights["bias"]}

    def cost(self, case, feeds):
        T, D = case.inputs[0][2]
        E, k = case.weights[0][2][0], case.attrs["top_k"]
        a, b = router_scores.cost(T, D, E), router.cost(T, E, k)
        return {"flops": a["flops"] + b["flops"], "bytes": a["bytes"] + b["bytes"]}

    def torch_fn(self, case, weights, device):
        import torch

        w, bias = (torch.from_numpy(weights[n]).to(device) for n in ("weight", "bias"))
        k, scale = case.attrs["top_k"], case.attrs["routed_scaling_factor"]

        def run(x):
            s = torch.sqrt(torch.nn.functional.softplus(x @ w.T))
            idx = torch.topk(s + bias, k, dim=-1).indices
            picked = s.gather(1, idx)
            return picked / (picked.sum(-1, keepdim=True) + 1e-20) * scale, idx
        return run


class HashRouterDef(RouterDef):
    name = "router_hash"

    def _case(self, shapes, phase, tokens):
        d = DIMS[shapes]
        D, E, k = d["hidden"], d["experts"], d["top_k"]
        return Case(self.name, shapes, phase, f"T{tokens}", "HashMoERouter", "tide",
                    [("x", "float32", (tokens, D)), ("input_ids", "int64", (tokens,))],
                    [("weight", "float32", (E, D)), ("tid2eid", "int64", (d["vocab"], k))],
                    [("weights", "float32", (tokens, k)), ("indices", "int64", (tokens, k))],
                    {"routed_scaling_factor": d["scaling"]}, {}, _heavy_moe(shapes, tokens))

    def make_inputs(self, case, rng):
        vocab = case.weights[1][2][0]
        return {"x": _rand(rng, case.inputs[0][2]),
                "input_ids": rng.integers(0, vocab, case.inputs[1][2], dtype=np.int64)}

    def make_weights(self, case, rng):
        (_, _, ws), (_, _, ts) = case.weights
        E = ws[0]
        table = np.argsort(rng.random((ts[0], E)), axis=1)[:, :ts[1]].astype(np.int64)
        return {"weight": _rand(rng, ws, 3.0 / math.sqrt(ws[1])), "tid2eid": table}

    def reference(self, case, feeds, weights):
        scores = router_scores.reference(feeds["x"], weights["weight"])
        w, idx = router_hash.reference(scores, weights["tid2eid"], feeds["input_ids"],
                                       case.attrs["routed_scaling_factor"])
        return {"weights": w, "indices": idx}

    def cost(self, case, feeds):
        T, D = case.inputs[0][2]
        E, k = case.weights[0][2][0], case.weights[1][2][1]
        a, b = router_scores.cost(T, D, E), router_hash.cost(T, k)
        return {"flops": a["flops"] + b["flops"], "bytes": a["bytes"] + b["bytes"]}

    def torch_fn(self, case, weights, device):
        import torch

        w, table = (torch.from_numpy(weights[n]).to(device) for n in ("weight", "tid2eid"))
        scale = case.attrs["routed_scaling_factor"]

        def run(x, ids):
            s = torch.sqrt(torch.nn.functional.softplus(x @ w.T))
            idx = table[ids]
            picked = s.gather(1, idx)
            return picked / (picked.sum(-1, keepdim=True) + 1e-20) * scale, idx
        return run


class MoEExpertsDef(KernelDef):
    """Routed experts: permute + grouped gate/up + grouped down + combine."""

    name, group = "moe_experts", "moe"

    def _case(self, shapes, phase, tokens):
        d = DIMS[shapes]
        D, F, E, k = d["hidden"], d["inter"], d["experts"], d["top_k"]
        return Case(self.name, shapes, phase, f"T{tokens}", "MoEExperts", "tide",
                    [("x", "float32", (tokens, D)), ("weights", "float32", (tokens, k)),
                     ("indices", "int64", (tokens, k))],
                    [("gate_up", "float32", (E, 2 * F, D)), ("down", "float32", (E, D, F))],
                    [("y", "float32", (tokens, D))], {"swiglu_limit": d["limit"]}, {},
                    _heavy_moe(shapes, tokens),
                    {} if tokens < GENERIC_MAX_MOE_TOKENS or shapes == "tiny" else
                    {"generic": f"the dense generic body of MoEExperts takes minutes per call at {tokens} tokens"})

    cases = RouterDef.cases

    def make_inputs(self, case, rng):
        T, k = case.inputs[2][2]
        E = case.weights[0][2][0]
        idx = np.argsort(rng.random((T, E)), axis=1)[:, :k].astype(np.int64)
        return {"x": _rand(rng, case.inputs[0][2]), "weights": rng.uniform(0.1, 1.0, (T, k)).astype(np.float32),
                "indices": idx}

    def make_weights(self, case, rng):
        (_, _, gs), (_, _, ds) = case.weights
        limit = case.attrs["swiglu_limit"]
        return {"gate_up": _rand(rng, gs, 2.5 * limit / math.sqrt(gs[2])), "down": _rand(rng, ds, ds[2] ** -0.5)}

    def reference(self, case, feeds, weights):
        return {"y": moe_experts.function_reference(feeds["x"], feeds["weights"], feeds["indices"], weights["gate_up"],
                                                    weights["down"], case.attrs["swiglu_limit"])}

    def cost(self, case, feeds):
        T, D = case.inputs[0][2]
        k = case.inputs[2][2][1]
        E, F = case.weights[0][2][0], case.weights[0][2][1] // 2
        br = moe_experts.block_rows(T, k, E)
        counts = np.bincount(feeds["indices"].ravel(), minlength=E)
        used = int(sum(-(-c // br) * br for c in counts))
        active = int((counts > 0).sum())
        parts = [moe_permute.cost(T, k, E, br), moe_gate_up.cost(used, active, D, F), moe_down.cost(used, active, D, F),
                 moe_experts.cost(T, k, D)]
        return {"flops": sum(p["flops"] for p in parts), "bytes": sum(p["bytes"] for p in parts)}

    def torch_fn(self, case, weights, device):
        import torch

        gate_up, down = (torch.from_numpy(weights[n]).to(device) for n in ("gate_up", "down"))
        limit, F = case.attrs["swiglu_limit"], gate_up.shape[1] // 2

        def run(x, w, idx):  # transformers' DeepseekV4Experts loop: each hit expert over its tokens
            y = torch.zeros_like(x)
            for e in torch.unique(idx).tolist():
                tok, j = torch.nonzero(idx == e, as_tuple=True)
                gu = x[tok] @ gate_up[e].T
                g, u = gu[:, :F].clamp(max=limit), gu[:, F:].clamp(-limit, limit)
                y.index_add_(0, tok, (torch.nn.functional.silu(g) * u * w[tok, j, None]) @ down[e].T)
            return (y,)
        return run


class SharedExpertDef(KernelDef):
    name, group = "moe_shared", "moe"
    cases = RouterDef.cases

    def _case(self, shapes, phase, tokens):
        d = DIMS[shapes]
        D, F = d["hidden"], d["inter"]
        return Case(self.name, shapes, phase, f"T{tokens}", "SharedExpert", "tide",
                    [("x", "float32", (tokens, D))],
                    [("gate_weight", "float32", (F, D)), ("up_weight", "float32", (F, D)),
                     ("down_weight", "float32", (D, F))],
                    [("y", "float32", (tokens, D))], {"swiglu_limit": d["limit"]}, {}, _heavy_moe(shapes, tokens))

    def make_inputs(self, case, rng):
        return {"x": _rand(rng, case.inputs[0][2])}

    def make_weights(self, case, rng):
        limit = case.attrs["swiglu_limit"]
        return {n: _rand(rng, s, (2.5 * limit if n != "down_weight" else 1.0) / math.sqrt(s[1]))
                for n, _, s in case.weights}

    def reference(self, case, feeds, weights):
        return {"y": moe_shared.reference(feeds["x"], weights["gate_weight"], weights["up_weight"],
                                          weights["down_weight"], case.attrs["swiglu_limit"])}

    def cost(self, case, feeds):
        T, D = case.inputs[0][2]
        return moe_shared.cost(T, D, case.weights[0][2][0])

    def torch_fn(self, case, weights, device):
        import torch

        g, u, dn = (torch.from_numpy(weights[n]).to(device) for n in ("gate_weight", "up_weight", "down_weight"))
        limit = case.attrs["swiglu_limit"]
        return lambda x: ((torch.nn.functional.silu((x @ g.T).clamp(max=limit))
                           * (x @ u.T).clamp(-limit, limit)) @ dn.T,)


class LinearDef(KernelDef):
    """A model weight's matmul, as the exporter writes a linear layer: ``Gemm(x, W, transB=1)`` with
    W [N, K] an initializer (tide substitutes ``tide.ops.linear`` on the packed weight)."""

    name, group = "linear", "linear"

    def cases(self, shapes):
        d = DIMS[shapes]
        layers = {"q_a": (d["hidden"], d["q_lora"]), "q_b": (d["q_lora"], d["heads"] * d["head_dim"])}
        if shapes == "tiny":
            layers["lm_head"] = (d["hidden"], d["vocab"])
        out = []
        for layer, (dim, cols) in layers.items():
            for phase, rows in (("decode", 1), ("prefill", d["chunk"]), ("prefill", 256)):
                if layer == "q_a" and rows == 256:
                    continue
                out.append(Case(self.name, shapes, phase, f"{layer}-T{rows}", "Gemm", "",
                                [("x", "float32", (rows, dim))], [("weight", "float32", (cols, dim))],
                                [("y", "float32", (rows, cols))], {"transB": 1}, {}))
        return out

    def make_inputs(self, case, rng):
        return {"x": _rand(rng, case.inputs[0][2])}

    def make_weights(self, case, rng):
        cols, dim = case.weights[0][2]
        return {"weight": _rand(rng, (cols, dim), 1.0 / math.sqrt(dim))}

    def reference(self, case, feeds, weights):
        return {"y": linear.reference(feeds["x"], weights["weight"].T)}

    def cost(self, case, feeds):
        rows, dim = case.inputs[0][2]
        return linear.cost(rows, dim, case.weights[0][2][0])

    def torch_fn(self, case, weights, device):
        import torch

        w = torch.from_numpy(weights["weight"]).to(device)
        return lambda x: (x @ w.T,)


def _fp8(rng, shape) -> tuple[np.ndarray, np.ndarray]:
    """Random e4m3 bytes (finite) and e8m0 scales of a [N, K] weight whose values are O(1/sqrt(K))."""
    n, k = shape
    finite = np.array([b for b in range(256) if b & 0x7F != 0x7F], np.uint8)
    scale = np.uint8(127 - 5 - int(math.log2(k)) // 2)
    return rng.choice(finite, size=shape), np.full((-(-n // 128), -(-k // 128)), scale, np.uint8)


def _fp4(rng, shape, target_amax: float) -> tuple[np.ndarray, np.ndarray]:
    """Random packed e2m1 bytes and e8m0 scales of a [..., N, K] weight with |w| up to about ``target_amax``."""
    *lead, n, k = shape
    scale = np.uint8(127 + math.ceil(math.log2(target_amax / 6)))
    return (rng.integers(0, 256, size=(*lead, n, k // 2), dtype=np.uint8),
            np.full((*lead, n, k // 32), scale, np.uint8))


class LinearFP8Def(LinearDef):
    """A model weight's matmul on an FP8 weight as DeepSeek releases it (e4m3 bytes, 128 x 128
    power-of-two scales), read through tide.DequantizeFP8 as the exporter writes it: tide reads the
    bytes in its FP8 linear; the baselines multiply by the dequantized float32 weight."""

    name, group = "linear_fp8", "linear"

    def cases(self, shapes):
        out = []
        for case in super().cases(shapes):
            if case.label.startswith("lm_head"):
                continue   # the releases keep the lm_head in bf16
            (_, _, (cols, dim)), = case.weights
            out.append(dataclasses.replace(
                case, kernel=self.name,
                weights=[("weight", "uint8", (cols, dim)), ("weight.scale", "uint8", (-(-cols // 128), -(-dim // 128)))],
                params={"quantized": {"weight": "fp8"}}))
        return out

    def make_weights(self, case, rng):
        q, s = _fp8(rng, case.weights[0][2])
        return {"weight": q, "weight.scale": s}

    def reference(self, case, feeds, weights):
        return {"y": linear_fp8.reference(feeds["x"], weights["weight"], weights["weight.scale"])}

    def cost(self, case, feeds):
        rows, dim = case.inputs[0][2]
        return linear_fp8.cost(rows, dim, case.weights[0][2][0])

    def torch_fn(self, case, weights, device):
        import torch

        w = torch.from_numpy(dequantize_fp8.reference(weights["weight"], weights["weight.scale"], 128, 128)
                             .astype(np.float32)).to(device)
        return lambda x: (x @ w.T,)


class MoEExpertsFP4Def(MoEExpertsDef):
    """Routed experts with FP4 weights as DeepSeek releases them (packed e2m1, 1 x 32 scales), read
    through tide.DequantizeFP4: tide's grouped GEMMs read the routed experts' bytes; the baselines
    run the dequantized float32 experts."""

    name = "moe_experts_fp4"

    def _case(self, shapes, phase, tokens):
        case = super()._case(shapes, phase, tokens)
        (_, _, (E, F2, D)), (_, _, (_, _, F)) = case.weights
        weights = [("gate_up", "uint8", (E, F2, D // 2)), ("gate_up.scale", "uint8", (E, F2, D // 32)),
                   ("down", "uint8", (E, D, F // 2)), ("down.scale", "uint8", (E, D, F // 32))]
        return dataclasses.replace(case, kernel=self.name, weights=weights,
                                   params={"quantized": {"gate_up": "fp4", "down": "fp4"}})

    def make_weights(self, case, rng):
        (_, _, (E, F2, half_d)), _, (_, _, (_, D, half_f)), _ = case.weights
        limit = case.attrs["swiglu_limit"]
        gq, gs = _fp4(rng, (E, F2, 2 * half_d), 2.5 * limit * 3 / math.sqrt(2 * half_d))
        dq, ds = _fp4(rng, (E, D, 2 * half_f), 3 / math.sqrt(2 * half_f))
        return {"gate_up": gq, "gate_up.scale": gs, "down": dq, "down.scale": ds}

    def _float(self, weights):
        return {n: dequantize_fp4.reference(weights[n], weights[f"{n}.scale"]).astype(np.float32)
                for n in ("gate_up", "down")}

    def reference(self, case, feeds, weights):
        return super().reference(case, feeds, self._float(weights))

    def cost(self, case, feeds):
        T, D = case.inputs[0][2]
        k = case.inputs[2][2][1]
        E, F = case.weights[0][2][0], case.weights[0][2][1] // 2
        br = moe_experts.block_rows(T, k, E)
        counts = np.bincount(feeds["indices"].ravel(), minlength=E)
        used = int(sum(-(-c // br) * br for c in counts))
        active = int((counts > 0).sum())
        size = moe_experts.WEIGHT_BYTES["fp4"]
        parts = [moe_permute.cost(T, k, E, br), moe_gate_up.cost(used, active, D, F, size),
                 moe_down.cost(used, active, D, F, size), moe_experts.cost(T, k, D)]
        return {"flops": sum(p["flops"] for p in parts), "bytes": sum(p["bytes"] for p in parts)}

    def torch_fn(self, case, weights, device):
        return super().torch_fn(case, self._float(weights), device)


class TopKDef(KernelDef):
    """ONNX TopK (tide substitutes ``tide.ops.topk`` for every top-k, kernels on or off)."""

    name, group = "topk", "attention"
    paired = {"values": "indices"}

    def cases(self, shapes):
        d = DIMS[shapes]
        out = []
        for phase, rows, ctx in (("decode", 1, d["contexts"][1]), ("prefill", d["chunk"], d["contexts"][0])):
            n, k = ctx // d["csa_ratio"], d["index_topk"]
            out.append(Case(self.name, shapes, phase, f"rows{rows}xn{n}", "TopK", "",
                            [("data", "float32", (rows, n))], [("k", "int64", (1,))],
                            [("values", "float32", (rows, k)), ("indices", "int64", (rows, k))],
                            {"axis": -1, "largest": 1, "sorted": 1}, {"k": k}))
        return out

    def make_inputs(self, case, rng):
        return {"data": _rand(rng, case.inputs[0][2])}

    def make_weights(self, case, rng):
        return {"k": np.array([case.params["k"]], np.int64)}

    def reference(self, case, feeds, weights):
        values, idx = topk.reference(feeds["data"].astype(np.float64), case.params["k"])
        return {"values": values, "indices": idx, "indices:scores": feeds["data"].astype(np.float64)}

    def cost(self, case, feeds):
        rows, n = case.inputs[0][2]
        return topk.cost(rows, n, case.params["k"])

    def torch_fn(self, case, weights, device):
        import torch

        k = case.params["k"]
        return lambda data: tuple(torch.topk(data, k, dim=-1))


KERNELS = {k.name: k for k in (RMSNorm(), RoPEDef(), SinkAttentionDef(), SparseAttentionDef(), IndexerDef(),
                               CompressorDef(), RouterDef(), HashRouterDef(), MoEExpertsDef(), SharedExpertDef(), TopKDef(),
                               LinearDef(), LinearFP8Def(), MoEExpertsFP4Def())}


def all_cases(shape_sets, kernels=None, heavy: bool = False) -> list[Case]:
    """The cases of ``shape_sets`` for ``kernels`` (all by default); heavy ones only with ``heavy``
    (every ``pro`` case is heavy)."""
    unknown = sorted(set(kernels or ()) - set(KERNELS))
    if unknown:
        raise ValueError(f"unknown kernel(s) {', '.join(unknown)}; known: {', '.join(KERNELS)}")
    bad = sorted(set(shape_sets) - set(DIMS))
    if bad:
        raise ValueError(f"unknown shape set(s) {', '.join(bad)}; known: {', '.join(DIMS)}")
    out = []
    for shapes in shape_sets:
        for name, kdef in KERNELS.items():
            if kernels and name not in kernels:
                continue
            for case in kdef.cases(shapes):
                case.heavy = case.heavy or shapes == "pro"
                if heavy or not case.heavy:
                    out.append(case)
    return out
