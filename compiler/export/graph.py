"""The main ONNX graph: one graph for prefill and decode (docs/onnx-contract.md).

Inputs: input_ids [B, seq], start_pos [B], then the decode state `past.<layer>.<what>`.
Outputs: logits [B, seq, vocab], then `present.<layer>.<what>` in the same order. Every present
tensor is produced by exactly one ScatterND whose data input is the matching past tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import FunctionProto, NodeProto, TensorProto, ValueInfoProto, helper

from ..artifact.format import StateSpec
from .builder import Builder
from .config import ModelSpec
from .functions import build_functions
from .weights import ParamSpec

SEQ = "seq"


def compressed_rows(max_seq_len: int, ratio: int) -> int:
    """Rows of a compressed cache: one per complete window, plus the spare row that lets every
    call write a fixed number of candidate rows."""
    return max_seq_len // ratio + 1


def state_specs(spec: ModelSpec, batch: int, max_seq_len: int) -> list[StateSpec]:
    out = []
    dh, di = spec.head_dim, spec.index_dim
    for i, (kind, r) in enumerate(zip(spec.layer_kinds, spec.layer_ratios)):
        out.append(StateSpec(f"{i}.window", "float32", (batch, spec.window, dh)))
        if kind == "sliding":
            continue
        series = 2 if kind == "csa" else 1
        ring = series * r
        out += [
            StateSpec(f"{i}.compressed", "float32", (batch, compressed_rows(max_seq_len, r), dh)),
            StateSpec(f"{i}.compressor_kv", "float32", (batch, ring, series * dh)),
            StateSpec(f"{i}.compressor_score", "float32", (batch, ring, series * dh)),
        ]
        if kind == "csa":
            out += [
                StateSpec(f"{i}.index_keys", "float32", (batch, compressed_rows(max_seq_len, r), di)),
                StateSpec(f"{i}.indexer_kv", "float32", (batch, ring, 2 * di)),
                StateSpec(f"{i}.indexer_score", "float32", (batch, ring, 2 * di)),
            ]
    return out


@dataclass
class GraphParts:
    nodes: list[NodeProto]
    inputs: list[ValueInfoProto]
    outputs: list[ValueInfoProto]
    functions: list[FunctionProto]
    states: list[StateSpec]


class _MainGraph:
    def __init__(self, spec: ModelSpec, params: list[ParamSpec], batch: int, max_seq_len: int, opset: int,
                 forms: dict[str, str]):
        self.spec = spec
        self.batch = batch
        self.max_seq_len = max_seq_len
        self.b = Builder(opset, "model")
        self.forms = forms
        self.param_names = {p.name for p in params}
        self._params: dict[str, str] = {}
        self.used: set[str] = set()

    # plumbing ------------------------------------------------------------------------------------
    def w(self, name: str) -> str:
        """A parameter as a float32 (or int64) value: bf16 initializers get one Cast each, quantized
        ones (initializers ``name`` and ``name.scale``) one tide.DequantizeFP8 / DequantizeFP4 call."""
        assert name in self.param_names, name
        if name not in self._params:
            form = self.forms[name]
            self._params[name] = name
            if form == "bfloat16":
                self._params[name] = self.b.op("Cast", name, to=TensorProto.FLOAT)
            elif form == "fp8":
                self._params[name] = self.call("DequantizeFP8", name, name + ".scale", block_n=128, block_k=128)
            elif form == "fp4":
                self._params[name] = self.call("DequantizeFP4", name, name + ".scale")
        return self._params[name]

    def call(self, fname: str, *inputs: str, outputs=1, **attrs):
        self.used.add(fname)
        return self.b.call(fname, *inputs, outputs=outputs, **attrs)

    def rmsnorm(self, x: str, weight: str) -> str:
        return self.call("RMSNorm", x, weight, epsilon=self.spec.rms_eps)

    def rope_tables(self, positions: str, inv_freq: tuple[float, ...], scale: float) -> tuple[str, str]:
        b = self.b
        freqs = b.op("Mul", b.unsqueeze(b.op("Cast", positions, to=TensorProto.FLOAT), -1),
                     b.const(np.array(inv_freq, dtype=np.float32)))
        cos, sin = b.op("Cos", freqs), b.op("Sin", freqs)
        if scale != 1.0:
            cos, sin = b.op("Mul", cos, b.scalar_f(scale)), b.op("Mul", sin, b.scalar_f(scale))
        return cos, sin

    # shared per-call tensors -----------------------------------------------------------------------
    def positions(self) -> None:
        b, spec = self.b, self.spec
        b.scope = "model/positions"
        self.batch_size = b.scalar_i(self.batch)
        self.seq = b.dim("input_ids", 1)
        self.pos = b.op("Add", b.unsqueeze("start_pos", 1), b.arange(self.seq))           # [B,S]
        self.ropes = {}
        for label, freq, scale, used in (
                ("main", spec.main_inv_freq, spec.main_rope_scale, "sliding" in spec.layer_kinds),
                ("compress", spec.compress_inv_freq, spec.compress_rope_scale,
                 any(k != "sliding" for k in spec.layer_kinds))):
            if used:
                cos, sin = self.rope_tables(self.pos, freq, scale)
                cos_h, sin_h = b.unsqueeze(cos, 2), b.unsqueeze(sin, 2)
                self.ropes[label] = (cos, sin, cos_h, sin_h, b.op("Neg", sin_h))

        # window keys = [ring (W slots) ; this call's S tokens]; slot s of the ring holds the
        # latest position p < start_pos with p % W == s (negative: never written).
        w = spec.window
        prev = b.unsqueeze(b.op("Sub", "start_pos", b.scalar_i(1)), 1)
        slots = b.const(np.arange(w, dtype=np.int64))
        # prev - s >= -W; adding W keeps the Mod dividend non-negative (same residue).
        ring_pos = b.op("Sub", prev, b.op("Mod", b.op("Add", b.op("Sub", prev, slots), b.scalar_i(w)),
                                          b.scalar_i(w)))
        key_pos = b.unsqueeze(b.op("Concat", ring_pos, self.pos, axis=1), 1)               # [B,1,W+S]
        query_pos = b.unsqueeze(self.pos, 2)                                                # [B,S,1]
        visible = b.op("And", b.op("And", b.ge(key_pos, b.scalar_i(0)), b.ge(query_pos, key_pos)),
                       b.op("Less", b.op("Sub", query_pos, b.scalar_i(w)), key_pos))
        self.window_bias = b.neg_inf_where(visible)                                        # [B,S,W+S]
        n_keep = b.op("Min", self.seq, b.scalar_i(w))
        skip = b.op("Sub", self.seq, n_keep)
        self.window_skip = b.to_1d(skip)
        kept = b.op("Add", b.unsqueeze(b.op("Add", "start_pos", skip), 1), b.arange(n_keep))
        self.window_index = b.stack_last(b.batch_index(kept, self.batch_size, 2),
                                         b.op("Mod", kept, b.scalar_i(w)))                  # [B,n,2]

        self.per_ratio = {}
        for kind, r in zip(spec.layer_kinds, spec.layer_ratios):
            if kind == "sliding" or r in self.per_ratio:
                continue
            self.per_ratio[r] = self.ratio_tensors(r)

    def ratio_tensors(self, r: int) -> dict[str, str]:
        """Per compression ratio: rope tables of this call's candidate entries and the HCA masks."""
        b, spec = self.b, self.spec
        ratio = b.scalar_i(r)
        rows = compressed_rows(self.max_seq_len, r)
        base = b.op("Div", "start_pos", ratio)
        n_cand = b.op("Add", b.op("Div", self.seq, ratio), b.scalar_i(1))
        window = b.op("Add", b.unsqueeze(base, 1), b.arange(n_cand))                       # [B,nb]
        cos, sin = self.rope_tables(b.op("Mul", window, ratio), spec.compress_inv_freq, spec.compress_rope_scale)
        out = {"cos": cos, "sin": sin}
        if any(k == "hca" and rr == r for k, rr in zip(spec.layer_kinds, spec.layer_ratios)):
            row_ids = b.const(np.arange(rows, dtype=np.int64))
            old_visible = b.op("Less", b.unsqueeze(row_ids, 0), b.unsqueeze(base, 1))      # [B,C]
            old_visible = b.op("Expand", b.unsqueeze(old_visible, 1),
                               b.op("Concat", b.i64(self.batch), b.to_1d(self.seq), b.i64(rows), axis=0))
            threshold = b.unsqueeze(b.op("Div", b.op("Add", self.pos, b.scalar_i(1)), ratio), 2)  # [B,S,1]
            new_visible = b.op("Less", b.unsqueeze(window, 1), threshold)                   # [B,S,nb]
            out["hca_bias"] = b.op("Concat", self.window_bias, b.neg_inf_where(old_visible),
                                   b.neg_inf_where(new_visible), axis=2)
        return out

    # layers ------------------------------------------------------------------------------------------
    def scatter(self, state: str, index: str, update: str) -> None:
        self.b.op("ScatterND", f"past.{state}", index, update, outputs=[f"present.{state}"])

    def compressor(self, layer: int, x: str, prefix: str, names: tuple[str, str, str], head_dim: int,
                   overlap: int) -> str:
        spec, r = self.spec, self.spec.layer_ratios[layer]
        cache, kv_state, score_state = (f"{layer}.{n}" for n in names)
        tables = self.per_ratio[r]
        entries, cache_index, cache_update, state_index, kv_update, score_update = self.call(
            "Compressor", x, "start_pos", f"past.{kv_state}", f"past.{score_state}", f"past.{cache}",
            self.w(prefix + "kv_proj.weight"), self.w(prefix + "gate_proj.weight"), self.w(prefix + "position_bias"),
            self.w(prefix + "kv_norm.weight"), tables["cos"], tables["sin"], outputs=6,
            ratio=r, overlap=overlap, head_dim=head_dim, epsilon=spec.rms_eps, rope_dim=spec.rope_dim)
        self.scatter(cache, cache_index, cache_update)
        self.scatter(kv_state, state_index, kv_update)
        self.scatter(score_state, state_index, score_update)
        return entries

    def attention(self, i: int, x: str) -> str:
        b, spec = self.b, self.spec
        kind, r = spec.layer_kinds[i], spec.layer_ratios[i]
        a = f"model.layers.{i}.self_attn."
        cos, sin, cos_h, sin_h, neg_sin_h = self.ropes["main" if kind == "sliding" else "compress"]
        scale = spec.head_dim ** -0.5

        q_res = self.rmsnorm(b.linear(x, self.w(a + "q_a_proj.weight")), self.w(a + "q_a_norm.weight"))
        q = b.op("Reshape", b.linear(q_res, self.w(a + "q_b_proj.weight")), b.i64(0, 0, spec.heads, spec.head_dim))
        q = self.rmsnorm(q, b.const(np.ones(spec.head_dim, dtype=np.float32)))
        q = self.call("RoPE", q, cos_h, sin_h, rope_dim=spec.rope_dim)
        kv = self.rmsnorm(b.linear(x, self.w(a + "kv_proj.weight")), self.w(a + "kv_norm.weight"))
        kv = self.call("RoPE", kv, cos, sin, rope_dim=spec.rope_dim)                    # [B,S,Dh]

        keys = b.op("Concat", f"past.{i}.window", kv, axis=1)
        self.scatter(f"{i}.window", self.window_index, b.slice(kv, self.window_skip, b.to_1d(self.seq), 1))
        sinks = self.w(a + "sinks")
        if kind == "sliding":
            out = self.call("SinkAttention", q, keys, self.window_bias, sinks, scale=scale)
        elif kind == "hca":
            entries = self.compressor(i, x, a + "compressor.", ("compressed", "compressor_kv", "compressor_score"),
                                      spec.head_dim, overlap=0)
            keys = b.op("Concat", keys, f"past.{i}.compressed", entries, axis=1)
            out = self.call("SinkAttention", q, keys, self.per_ratio[r]["hca_bias"], sinks, scale=scale)
        else:
            entries = self.compressor(i, x, a + "compressor.", ("compressed", "compressor_kv", "compressor_score"),
                                      spec.head_dim, overlap=1)
            ix = a + "compressor.indexer."
            index_entries = self.compressor(i, x, ix, ("index_keys", "indexer_kv", "indexer_score"),
                                            spec.index_dim, overlap=1)
            rows = compressed_rows(self.max_seq_len, r)
            indices, valid = self.call(
                "LightningIndexer", q_res, x, cos, sin, f"past.{i}.index_keys", index_entries, "start_pos",
                self.w(ix + "q_b_proj.weight"), self.w(ix + "scorer.weights_proj.weight"), outputs=2,
                ratio=r, head_dim=spec.index_dim, rope_dim=spec.rope_dim, top_k=min(spec.index_topk, rows),
                softmax_scale=spec.index_dim ** -0.5, weights_scale=spec.index_heads ** -0.5)
            out = self.call("SparseSinkAttention", q, keys, self.window_bias, f"past.{i}.compressed", entries,
                            indices, valid, "start_pos", sinks, ratio=r, scale=scale)
        out = self.call("RoPE", out, cos_h, neg_sin_h, rope_dim=spec.rope_dim)
        grouped = b.op("Reshape", out, b.i64(0, 0, spec.o_groups, -1))
        o_a = b.op("Reshape", self.w(a + "o_a_proj.weight"), b.i64(spec.o_groups, spec.o_lora, -1))
        mixed = b.op("Einsum", grouped, o_a, equation="bsgi,gli->bsgl")
        return b.linear(b.op("Reshape", mixed, b.i64(0, 0, -1)), self.w(a + "o_b_proj.weight"))

    def moe(self, i: int, x: str) -> str:
        b, spec = self.b, self.spec
        m = f"model.layers.{i}.mlp."
        flat = b.op("Reshape", x, b.i64(-1, spec.hidden))
        if spec.hash_layers[i]:
            weights, indices = self.call("HashMoERouter", flat, self.w(m + "gate.weight"), self.w(m + "gate.tid2eid"),
                                         b.op("Reshape", "input_ids", b.i64(-1)), outputs=2,
                                         routed_scaling_factor=spec.routed_scaling)
        else:
            weights, indices = self.call("MoERouter", flat, self.w(m + "gate.weight"),
                                         self.w(m + "gate.e_score_correction_bias"), outputs=2,
                                         top_k=spec.top_k, routed_scaling_factor=spec.routed_scaling)
        routed = self.call("MoEExperts", flat, weights, indices, self.w(m + "experts.gate_up_proj"),
                           self.w(m + "experts.down_proj"), swiglu_limit=spec.swiglu_limit)
        shared = self.call("SharedExpert", flat, self.w(m + "shared_experts.gate_proj.weight"),
                           self.w(m + "shared_experts.up_proj.weight"), self.w(m + "shared_experts.down_proj.weight"),
                           swiglu_limit=spec.swiglu_limit)
        return b.op("Reshape", b.op("Add", routed, shared), b.i64(self.batch, -1, spec.hidden))

    def hc_pre(self, prefix: str, h: str):
        spec = self.spec
        return self.call("HyperConnectionPre", h, self.w(prefix + ".fn"), self.w(prefix + ".base"),
                         self.w(prefix + ".scale"), outputs=3, hc_mult=spec.hc_mult, hc_eps=spec.hc_eps,
                         norm_eps=spec.rms_eps, sinkhorn_iters=spec.hc_iters)

    def build(self) -> GraphParts:
        b, spec = self.b, self.spec
        states = state_specs(spec, self.batch, self.max_seq_len)
        self.positions()
        b.scope = "model/embed"
        embed = self.w("model.embed_tokens.weight")
        tokens = b.op("Gather", embed, "input_ids", axis=0)                                 # [B,S,D]
        h = b.op("Expand", b.unsqueeze(tokens, 2),
                 b.op("Concat", b.shape(tokens, 0, 2), b.i64(spec.hc_mult, spec.hidden), axis=0))
        for i in range(spec.n_layers):
            p = f"model.layers.{i}."
            b.scope = f"model/layers.{i}/attn"
            x, post, comb = self.hc_pre(p + "attn_hc", h)
            attn = self.attention(i, self.rmsnorm(x, self.w(p + "input_layernorm.weight")))
            h = self.call("HyperConnectionPost", attn, h, post, comb)
            b.scope = f"model/layers.{i}/mlp"
            x, post, comb = self.hc_pre(p + "ffn_hc", h)
            mlp = self.moe(i, self.rmsnorm(x, self.w(p + "post_attention_layernorm.weight")))
            h = self.call("HyperConnectionPost", mlp, h, post, comb)
        b.scope = "model/head"
        y = self.call("HyperHead", h, self.w("model.hc_head.hc_fn"), self.w("model.hc_head.hc_base"),
                      self.w("model.hc_head.hc_scale"), hc_eps=spec.hc_eps, norm_eps=spec.rms_eps)
        y = self.rmsnorm(y, self.w("model.norm.weight"))
        head = "model.embed_tokens.weight" if spec.tie_embeddings else "lm_head.weight"
        b.rename(b.linear(y, self.w(head)), "logits")

        f32 = TensorProto.FLOAT
        inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [self.batch, SEQ]),
                  helper.make_tensor_value_info("start_pos", TensorProto.INT64, [self.batch])]
        outputs = [helper.make_tensor_value_info("logits", f32, [self.batch, SEQ, spec.vocab])]
        for s in states:  # the decode state: float32, named without its past./present. prefix
            inputs.append(helper.make_tensor_value_info(f"past.{s.name}", f32, list(s.shape)))
            outputs.append(helper.make_tensor_value_info(f"present.{s.name}", f32, list(s.shape)))
        functions = build_functions(self.used, b.opset, spec.hc_iters)
        return GraphParts(b.nodes, inputs, outputs, functions, states)


def build_graph(spec: ModelSpec, params: list[ParamSpec], *, batch: int, max_seq_len: int, opset: int,
                forms: dict[str, str]) -> GraphParts:
    """The main graph; ``forms`` says how each parameter is stored ("float32", "bfloat16", "fp8",
    "fp4", "int64")."""
    return _MainGraph(spec, params, batch, max_seq_len, opset, forms).build()
