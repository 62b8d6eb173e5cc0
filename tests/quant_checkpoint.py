"""An independent writer of quantized DeepSeek-V4 test checkpoints, in the format of the real releases.

numpy + ml_dtypes + raw safetensors bytes only (no torch, no tide imports), so it can check tide's
reader against transformers without sharing code with either.

What it writes (the DeepSeek-V4 release format, which transformers 5.23 loads with
``FineGrainedFP8Config(dequantize=True)``):

* FP8 linears (attn wq_a / wq_b / wkv / wo_a / wo_b, indexer wq_b, shared experts w1 / w2 / w3,
  MTP e_proj / h_proj): ``float8_e4m3fn`` [N, K] plus ``<name>.scale`` (or ``weight_scale_inv``
  in the "hf" layout), ``float8_e8m0fnu`` [N / 128, K / 128]; w = q * scale per 128 x 128 block,
  scale = 2^ceil(log2(amax / 448)).
* Routed experts, ``experts="fp4"``: int8 [N, K / 2], two e2m1 codes per byte, the LOW nibble
  holding element 2j (code = sign << 3 | idx, idx -> {0, .5, 1, 1.5, 2, 3, 4, 6}), scale
  ``float8_e8m0fnu`` [N, K / 32], scale = 2^ceil(log2(amax / 6)), values rounded to nearest,
  ties to even, on the e2m1 grid. ``experts="fp8"``: as the FP8 linears. ``experts="bf16"``: bf16.
* bf16: embed, head, norms, router gate weight, compressor / indexer-compressor projections,
  indexer weights_proj. float32: attn_sink, compressor ape, hc_* parameters, router bias.
  int64: tid2eid.
* config.json with the release's legacy keys (compress_ratios incl. one entry for the MTP layer,
  num_hash_layers, qk_rope_head_dim, yarn rope_scaling), top-level ``expert_dtype`` and
  ``quantization_config`` {quant_method fp8, fmt e4m3, scale_fmt ue8m0, weight_block_size
  [128, 128], activation_scheme dynamic}.

Layouts: "deepseek" = release names (``layers.0.attn.wq_a.weight`` + ``layers.0.attn.wq_a.scale``,
``embed.weight``, ``head.weight``, ``layers.0.ffn.experts.3.w1.weight`` ...). "hf" = the names
transformers 5.23's ``save_pretrained`` writes for a V4 model (release names under ``model.``,
but ``model.embed_tokens.weight``, ``model.norm.weight``, ``model.hc_head.hc_fn`` ... and
``head.weight``; see ``hf_name``), scales as ``<weight name>_scale_inv``
(``model.layers.0.attn.wq_a.weight_scale_inv``). The MTP block keeps its release names
(``mtp.0.*``) in both layouts; transformers ignores it.

Every tensor is drawn from its own generator, seeded by (seed, crc32(release name)), so both
layouts and all expert formats hold the same underlying draws.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import zlib

import ml_dtypes
import numpy as np

BF16 = np.dtype(ml_dtypes.bfloat16)
E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)
E4M3_MAX = 448.0
E2M1_MAX = 6.0
E2M1_GRID = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
FP8_BLOCK = 128
FP4_BLOCK = 32

# ---------------------------------------------------------------------------------------------
# Configs


def tiny_quant_config(hca_ratio: int = 16, mtp: bool = True, experts: str = "fp4") -> dict:
    """A small release-style config.json (legacy keys) where every quantized dimension is a
    multiple of 128: 5 layers = sliding, CSA (ratio 4), HCA (``hca_ratio``: 16 via the legacy
    ``compress_rate_hca`` override, or 128 = the release default), CSA, HCA; 2 hash-routed then 3
    learned-routed MoE layers; plus one MTP layer (written, ignored by transformers) if ``mtp``.

    Fields mirror tide's built-in ``tiny`` with the quantized dims raised to 128 multiples
    (hidden 256, q_lora 128, head_dim 128 of which 64 rope, o_lora 128, moe_intermediate 128,
    index_head_dim 128, 8 routed experts)."""
    n_layers = 5
    cfg = {
        "architectures": ["DeepseekV4ForCausalLM"],
        "model_type": "deepseek_v4",
        "vocab_size": 512,
        "hidden_size": 256,
        "moe_intermediate_size": 128,
        "num_hidden_layers": n_layers,
        "num_attention_heads": 8,
        "num_key_value_heads": 1,
        "head_dim": 128,
        "qk_rope_head_dim": 64,
        "q_lora_rank": 128,
        "o_groups": 2,
        "o_lora_rank": 128,
        "n_routed_experts": 8,
        "n_shared_experts": 1,
        "num_experts_per_tok": 4,
        "routed_scaling_factor": 1.5,
        "scoring_func": "sqrtsoftplus",
        "norm_topk_prob": True,
        "num_hash_layers": 2,
        "swiglu_limit": 2.0,
        "sliding_window": 16,
        # one entry per layer + one for the MTP layer, as in the releases
        "compress_ratios": [0, 4, 128, 4, 128] + ([4] if mtp else []),
        "compress_rope_theta": 160000.0,
        "rope_theta": 10000.0,
        "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                         "beta_fast": 32, "beta_slow": 1},
        "index_n_heads": 16,
        "index_head_dim": 128,
        "index_topk": 4,
        "hc_mult": 4,
        "hc_sinkhorn_iters": 20,
        "hc_eps": 1.0e-6,
        "rms_norm_eps": 1.0e-6,
        "max_position_embeddings": 256,
        "num_nextn_predict_layers": 1 if mtp else 0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "torch_dtype": "bfloat16",
        "expert_dtype": experts,
        "quantization_config": _quantization_config(),
    }
    if hca_ratio != 128:
        cfg["compress_rate_hca"] = hca_ratio
    return cfg


def _quantization_config() -> dict:
    return {"quant_method": "fp8", "fmt": "e4m3", "scale_fmt": "ue8m0", "weight_block_size": [128, 128],
            "activation_scheme": "dynamic"}


_RATIO_KIND = {0: "sliding", 4: "csa", 128: "hca"}


def _layer_plan(cfg: dict) -> list[tuple[str, int, bool]]:
    """(kind, compress rate, hash-routed) per main layer, then per MTP layer (never hash)."""
    n = cfg["num_hidden_layers"]
    ratios = cfg["compress_ratios"]
    n_mtp = cfg.get("num_nextn_predict_layers", 0)
    if len(ratios) < n + n_mtp:
        raise ValueError(f"compress_ratios has {len(ratios)} entries, need {n} + {n_mtp} (MTP)")
    rate = {"sliding": 0, "csa": cfg.get("compress_rate_csa", 4), "hca": cfg.get("compress_rate_hca", 128)}
    n_hash = cfg.get("num_hash_layers", 3)
    out = []
    for i, r in enumerate(ratios[: n + n_mtp]):
        kind = _RATIO_KIND[r]
        out.append((kind, rate[kind], i < min(n, n_hash)))
    return out


# ---------------------------------------------------------------------------------------------
# Quantizers and reference decoders


def _pow2_ceil_exponent(x: np.ndarray) -> np.ndarray:
    """ceil(log2(x)) for x > 0, exactly (via frexp: x = m * 2^e, m in [0.5, 1))."""
    m, e = np.frexp(x.astype(np.float64))
    return np.where(m == 0.5, e - 1, e).astype(np.int64)


def _e8m0_bytes(amax: np.ndarray, qmax: float) -> np.ndarray:
    """The power-of-two scale 2^ceil(log2(amax / qmax)) as an e8m0 byte (exponent + 127);
    all-zero blocks get scale 1."""
    safe = np.where(amax > 0, amax, qmax).astype(np.float64) / qmax
    exp = np.where(amax > 0, _pow2_ceil_exponent(safe), 0)
    if exp.min() < -127 or exp.max() > 127:
        raise ValueError("block scale outside the e8m0 range")
    return (exp + 127).astype(np.uint8)


def e8m0_value(b: np.ndarray) -> np.ndarray:
    return np.ldexp(1.0, b.astype(np.int64) - 127)


def quantize_fp8(w: np.ndarray, block: int = FP8_BLOCK):
    """w [N, K] (N, K multiples of `block`) -> (q e4m3 [N, K], scale bytes uint8 [N/b, K/b],
    dequantized float32 [N, K])."""
    n, k = w.shape
    if n % block or k % block:
        raise ValueError(f"FP8 weight shape {w.shape} is not a multiple of {block}")
    w64 = w.astype(np.float64)
    blocks = w64.reshape(n // block, block, k // block, block)
    amax = np.abs(blocks).max(axis=(1, 3))
    sbytes = _e8m0_bytes(amax, E4M3_MAX)
    scale = e8m0_value(sbytes)[:, None, :, None]
    # w / scale is exact (power of two); the cast rounds to nearest even and cannot overflow
    q = (blocks / scale).reshape(n, k).astype(np.float32).astype(E4M3)
    return q, sbytes, dequantize_fp8(q, sbytes, block)


def dequantize_fp8(q: np.ndarray, sbytes: np.ndarray, block: int = FP8_BLOCK) -> np.ndarray:
    n, k = q.shape
    qf = q.astype(np.float64).reshape(n // block, block, k // block, block)
    return (qf * e8m0_value(sbytes)[:, None, :, None]).reshape(n, k).astype(np.float32)


def round_e2m1_codes(x: np.ndarray) -> np.ndarray:
    """Round |x| <= 6 to nearest on the e2m1 grid, ties to the even index (mantissa 0); returns
    4-bit codes sign << 3 | idx."""
    a = np.abs(x.astype(np.float64))
    d = np.abs(a[..., None] - E2M1_GRID)  # [..., 8]
    # nearest grid point; a tie is always between two neighbours, one with an even index
    key = np.where(d == d.min(axis=-1, keepdims=True), np.arange(8) % 2, 2)
    idx = key.argmin(axis=-1).astype(np.uint8)
    sign = np.signbit(x).astype(np.uint8)
    return (sign << 3) | idx


def quantize_fp4(w: np.ndarray, block: int = FP4_BLOCK):
    """w [N, K] -> (packed int8 [N, K/2], low nibble = element 2j; scale bytes uint8 [N, K/block];
    dequantized float32 [N, K])."""
    n, k = w.shape
    if k % block:
        raise ValueError(f"FP4 weight shape {w.shape}: K is not a multiple of {block}")
    w64 = w.astype(np.float64).reshape(n, k // block, block)
    amax = np.abs(w64).max(axis=-1)
    sbytes = _e8m0_bytes(amax, E2M1_MAX)
    codes = round_e2m1_codes(w64 / e8m0_value(sbytes)[..., None]).reshape(n, k)
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8).view(np.int8)
    return packed, sbytes, dequantize_fp4(packed, sbytes, block)


def dequantize_fp4(packed: np.ndarray, sbytes: np.ndarray, block: int = FP4_BLOCK) -> np.ndarray:
    u = packed.view(np.uint8)
    codes = np.empty((u.shape[0], u.shape[1] * 2), np.uint8)
    codes[:, 0::2] = u & 0xF
    codes[:, 1::2] = u >> 4
    lut = np.concatenate([E2M1_GRID, -E2M1_GRID])
    vals = lut[codes].reshape(u.shape[0], -1, block)
    return (vals * e8m0_value(sbytes)[..., None]).reshape(codes.shape).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Tensor list (release names)

# storage classes: "fp8" quantized linear, "expert" routed-expert weight, "bf16", "f32", "i64"


def release_tensors(cfg: dict) -> list[tuple[str, tuple[int, ...], str, str]]:
    """(release name, shape, storage class, init) of every tensor, main model then MTP."""
    d, hd = cfg["hidden_size"], cfg["head_dim"]
    heads, ql, og, ol = cfg["num_attention_heads"], cfg["q_lora_rank"], cfg["o_groups"], cfg["o_lora_rank"]
    e, f, topk = cfg["n_routed_experts"], cfg["moe_intermediate_size"], cfg["num_experts_per_tok"]
    ih, idim = cfg["index_n_heads"], cfg["index_head_dim"]
    vocab, n_hc = cfg["vocab_size"], cfg.get("hc_mult", 4)
    hc_out = (2 + n_hc) * n_hc
    n_main = cfg["num_hidden_layers"]
    plan = _layer_plan(cfg)

    def block(p: str, kind: str, rate: int, is_hash: bool) -> list:
        a = p + "attn."
        out = [
            (a + "attn_sink", (heads,), "f32", "sinks"),
            (a + "wq_a.weight", (ql, d), "fp8", "linear"),
            (a + "q_norm.weight", (ql,), "bf16", "norm"),
            (a + "wq_b.weight", (heads * hd, ql), "fp8", "linear"),
            (a + "wkv.weight", (hd, d), "fp8", "linear"),
            (a + "kv_norm.weight", (hd,), "bf16", "norm"),
            (a + "wo_a.weight", (og * ol, heads * hd // og), "fp8", "linear"),
            (a + "wo_b.weight", (d, og * ol), "fp8", "linear"),
        ]
        if kind != "sliding":
            c = a + "compressor."
            width = (2 if kind == "csa" else 1) * hd
            out += [
                (c + "ape", (rate, width), "f32", "ape"),
                (c + "wkv.weight", (width, d), "bf16", "linear"),
                (c + "wgate.weight", (width, d), "bf16", "linear"),
                (c + "norm.weight", (hd,), "bf16", "norm"),
            ]
        if kind == "csa":
            x = a + "indexer."
            out += [
                (x + "wq_b.weight", (ih * idim, ql), "fp8", "linear"),
                (x + "weights_proj.weight", (ih, d), "bf16", "linear"),
                (x + "compressor.ape", (rate, 2 * idim), "f32", "ape"),
                (x + "compressor.wkv.weight", (2 * idim, d), "bf16", "linear"),
                (x + "compressor.wgate.weight", (2 * idim, d), "bf16", "linear"),
                (x + "compressor.norm.weight", (idim,), "bf16", "norm"),
            ]
        m = p + "ffn."
        out.append((m + "gate.weight", (e, d), "bf16", "linear"))
        if is_hash:
            out.append((m + "gate.tid2eid", (vocab, topk), "i64", "tid2eid"))
        else:
            out.append((m + "gate.bias", (e,), "f32", "score_bias"))
        for j in range(e):
            x = f"{m}experts.{j}."
            out += [(x + "w1.weight", (f, d), "expert", "linear"), (x + "w2.weight", (d, f), "expert", "linear"),
                    (x + "w3.weight", (f, d), "expert", "linear")]
        out += [
            (m + "shared_experts.w1.weight", (f, d), "fp8", "linear"),
            (m + "shared_experts.w2.weight", (d, f), "fp8", "linear"),
            (m + "shared_experts.w3.weight", (f, d), "fp8", "linear"),
            (p + "attn_norm.weight", (d,), "bf16", "norm"),
            (p + "ffn_norm.weight", (d,), "bf16", "norm"),
        ]
        for hc in ("attn", "ffn"):
            out += [
                (f"{p}hc_{hc}_fn", (hc_out, n_hc * d), "f32", "linear"),
                (f"{p}hc_{hc}_base", (hc_out,), "f32", "hc_base"),
                (f"{p}hc_{hc}_scale", (3,), "f32", "hc_scale"),
            ]
        return out

    out = [("embed.weight", (vocab, d), "bf16", "embed")]
    for i in range(n_main):
        out += block(f"layers.{i}.", *plan[i])
    out += [
        ("norm.weight", (d,), "bf16", "norm"),
        ("hc_head_fn", (n_hc, n_hc * d), "f32", "linear"),
        ("hc_head_base", (n_hc,), "f32", "hc_base"),
        ("hc_head_scale", (1,), "f32", "hc_scale"),
    ]
    if not cfg.get("tie_word_embeddings", False):
        out.append(("head.weight", (vocab, d), "bf16", "linear"))
    for j, (kind, rate, _) in enumerate(plan[n_main:]):
        p = f"mtp.{j}."
        out += [
            (p + "enorm.weight", (d,), "bf16", "norm"),
            (p + "hnorm.weight", (d,), "bf16", "norm"),
            (p + "e_proj.weight", (d, d), "fp8", "linear"),
            (p + "h_proj.weight", (d, d), "fp8", "linear"),
        ]
        out += block(p, kind, rate, False)
        out += [
            (p + "norm.weight", (d,), "bf16", "norm"),
            (p + "hc_head_fn", (n_hc, n_hc * d), "f32", "linear"),
            (p + "hc_head_base", (n_hc,), "f32", "hc_base"),
            (p + "hc_head_scale", (1,), "f32", "hc_scale"),
        ]
    return out


def _draw(name: str, shape: tuple[int, ...], init: str, seed: int, n_experts: int) -> np.ndarray:
    """Seeded random values keeping activations O(1): linear N(0, 1/fan_in); norms 1 + N(0, 0.1^2);
    embed and sinks N(0, 1); ape and hc base N(0, 0.5^2); hc scale U(0.5, 1.5); router bias
    N(0, 0.1^2); tid2eid `top_k` distinct experts per token."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    if init == "tid2eid":
        return np.argsort(rng.random((shape[0], n_experts)), axis=1)[:, : shape[1]].astype(np.int64)
    if init == "hc_scale":
        return rng.uniform(0.5, 1.5, size=shape).astype(np.float32)
    x = rng.standard_normal(size=shape, dtype=np.float32)
    if init == "linear":
        x *= np.float32(1.0 / math.sqrt(shape[-1]))
    elif init == "norm":
        x = x * np.float32(0.1) + np.float32(1.0)
    elif init in ("ape", "hc_base"):
        x *= np.float32(0.5)
    elif init == "score_bias":
        x *= np.float32(0.1)
    return x


# ---------------------------------------------------------------------------------------------
# Names in the "hf" layout

_HF_RENAMES = [  # release -> transformers parameter path (conversion_mapping.py "deepseek_v4"), in order
    (r"\.attn\.", ".self_attn."),
    (r"\.ffn\.", ".mlp."),
    (r"\.indexer\.compressor\.", ".compressor.indexer."),
    (r"^embed\.weight$", "embed_tokens.weight"),
    (r"^head\.weight$", "lm_head.weight"),
    (r"^hc_head_fn$", "hc_head.hc_fn"),
    (r"^hc_head_base$", "hc_head.hc_base"),
    (r"^hc_head_scale$", "hc_head.hc_scale"),
    (r"\.attn_norm\.", ".input_layernorm."),
    (r"\.ffn_norm\.", ".post_attention_layernorm."),
    (r"\.hc_attn_(fn|base|scale)$", r".attn_hc.\1"),
    (r"\.hc_ffn_(fn|base|scale)$", r".ffn_hc.\1"),
    (r"\.attn_sink$", ".sinks"),
    (r"\.indexer\.weights_proj\.", ".compressor.indexer.scorer.weights_proj."),
    (r"\.indexer\.wq_b\.", ".compressor.indexer.q_b_proj."),
    (r"\.norm\.", ".kv_norm."),
    (r"\.ape$", ".position_bias"),
    (r"\.wq_a\.", ".q_a_proj."),
    (r"\.self_attn\.wq_b\.", ".self_attn.q_b_proj."),
    (r"\.wkv\.", ".kv_proj."),
    (r"\.wgate\.", ".gate_proj."),
    (r"\.wo_a\.", ".o_a_proj."),
    (r"\.wo_b\.", ".o_b_proj."),
    (r"\.q_norm\.", ".q_a_norm."),
    (r"\.gate\.bias$", ".gate.e_score_correction_bias"),
    (r"\.shared_experts\.w1\.", ".shared_experts.gate_proj."),
    (r"\.shared_experts\.w2\.", ".shared_experts.down_proj."),
    (r"\.shared_experts\.w3\.", ".shared_experts.up_proj."),
]


_HF_TOP = {"embed.weight": "model.embed_tokens.weight", "head.weight": "head.weight",
           "norm.weight": "model.norm.weight", "hc_head_fn": "model.hc_head.hc_fn",
           "hc_head_base": "model.hc_head.hc_base", "hc_head_scale": "model.hc_head.hc_scale"}


def hf_name(release_name: str) -> str:
    """The "hf" layout name of a release tensor = the name transformers 5.23's ``save_pretrained``
    writes for a V4 model: the release name under ``model.`` (``model.layers.0.attn.wq_a.weight``,
    ``model.layers.0.ffn.experts.3.w1.weight``, ``model.layers.0.hc_attn_fn``), except the
    top-level ``model.embed_tokens.weight``, ``model.norm.weight``, ``model.hc_head.hc_{fn,base,scale}``
    and ``head.weight``. MTP tensors keep their release name (save_pretrained drops them)."""
    if release_name.startswith("mtp."):
        return release_name
    return _HF_TOP.get(release_name, "model." + release_name)


def transformers_name(release_name: str) -> str:
    """The transformers ``DeepseekV4ForCausalLM`` parameter path of a (non-expert) release tensor,
    as conversion_mapping.py's ``deepseek_v4`` renames give it (``model.layers.0.self_attn.q_a_proj.weight``)."""
    name = release_name
    for pat, rep in _HF_RENAMES:
        name = re.sub(pat, rep, name)
    return name if name.startswith("lm_head.") else "model." + name


def transformers_weights(weights: dict[str, np.ndarray], cfg: dict) -> dict[str, np.ndarray]:
    """Release-keyed (dequantized) weights -> the state_dict names and shapes of transformers'
    ``DeepseekV4ForCausalLM`` (experts fused: gate_up_proj [E, 2F, D] = [w1; w3] per expert,
    down_proj [E, D, F]). MTP tensors are dropped."""
    out: dict[str, np.ndarray] = {}
    experts: dict[str, dict] = {}
    for name, w in weights.items():
        if name.startswith("mtp."):
            continue
        m = re.match(r"^(layers\.\d+)\.ffn\.experts\.(\d+)\.(w[123])\.weight$", name)
        if m:
            experts.setdefault(m.group(1), {})[(int(m.group(2)), m.group(3))] = w
            continue
        out[transformers_name(name)] = w
    for layer, ws in experts.items():
        e = cfg["n_routed_experts"]
        out[f"model.{layer}.mlp.experts.gate_up_proj"] = np.stack(
            [np.concatenate([ws[(j, "w1")], ws[(j, "w3")]], axis=0) for j in range(e)])
        out[f"model.{layer}.mlp.experts.down_proj"] = np.stack([ws[(j, "w2")] for j in range(e)])
    return out


# ---------------------------------------------------------------------------------------------
# safetensors


def write_safetensors(path: str, tensors: dict[str, tuple[str, np.ndarray]]) -> None:
    """tensors: name -> (safetensors dtype string, array whose bytes are stored)."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dt, arr) in tensors.items():
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for _, arr in tensors.values():
            f.write(np.ascontiguousarray(arr).tobytes())


# ---------------------------------------------------------------------------------------------
# The writer


def write_quantized_checkpoint(directory: str, config: dict | None = None, seed: int = 0, layout: str = "deepseek",
                               experts: str = "fp4", scale_dtype: str = "e8m0",
                               shards: int = 1) -> dict[str, np.ndarray]:
    """Writes config.json + safetensors of a quantized V4 checkpoint into `directory`.

    config: a release-style config.json dict (legacy keys; default ``tiny_quant_config()``);
    ``expert_dtype`` and ``quantization_config`` are set from `experts`. layout: "deepseek"
    (release names, ``.scale``) or "hf" (see ``hf_name``; ``.weight_scale_inv``). experts:
    "fp4" | "fp8" | "bf16". scale_dtype: "e8m0" stores scales as safetensors ``F8_E8M0``, "u8"
    as ``U8`` (same bytes). shards > 1 splits the tensors over that many files with a
    model.safetensors.index.json.

    Returns {release name: dequantized float32 array} (int64 for tid2eid) of every tensor,
    MTP included, whatever the layout; ``transformers_weights`` maps it to transformers' names."""
    if layout not in ("deepseek", "hf"):
        raise ValueError(f"layout must be 'deepseek' or 'hf', got {layout!r}")
    if experts not in ("fp4", "fp8", "bf16"):
        raise ValueError(f"experts must be 'fp4', 'fp8' or 'bf16', got {experts!r}")
    if scale_dtype not in ("e8m0", "u8"):
        raise ValueError(f"scale_dtype must be 'e8m0' or 'u8', got {scale_dtype!r}")
    cfg = dict(config if config is not None else tiny_quant_config())
    cfg["quantization_config"] = _quantization_config()
    if experts == "bf16":
        cfg.pop("expert_dtype", None)
    else:
        cfg["expert_dtype"] = experts
    scale_st = "F8_E8M0" if scale_dtype == "e8m0" else "U8"

    os.makedirs(directory, exist_ok=True)
    stored: dict[str, tuple[str, np.ndarray]] = {}
    deq: dict[str, np.ndarray] = {}
    for name, shape, storage, init in release_tensors(cfg):
        w = _draw(name, shape, init, seed, cfg["n_routed_experts"])
        out_name = name if layout == "deepseek" else hf_name(name)
        scale_name = (name.removesuffix(".weight") + ".scale" if layout == "deepseek"
                      else out_name + "_scale_inv")
        if storage == "expert":
            storage = experts
        if storage == "fp8":
            q, s, d = quantize_fp8(w)
            stored[out_name] = ("F8_E4M3", q)
            stored[scale_name] = (scale_st, s)
        elif storage == "fp4":
            q, s, d = quantize_fp4(w)
            stored[out_name] = ("I8", q)
            stored[scale_name] = (scale_st, s)
        elif storage == "bf16":
            q = w.astype(BF16)
            d = q.astype(np.float32)
            stored[out_name] = ("BF16", q)
        elif storage == "f32":
            d = w.astype(np.float32)
            stored[out_name] = ("F32", d)
        else:  # i64
            d = w
            stored[out_name] = ("I64", w)
        deq[name] = d

    names = list(stored)
    if shards <= 1:
        write_safetensors(os.path.join(directory, "model.safetensors"), stored)
    else:
        per = -(-len(names) // shards)
        weight_map = {}
        for k in range(shards):
            fname = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
            part = {n: stored[n] for n in names[k * per:(k + 1) * per]}
            write_safetensors(os.path.join(directory, fname), part)
            weight_map.update({n: fname for n in part})
        total = sum(a.nbytes for _, a in stored.values())
        with open(os.path.join(directory, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
    with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2)
    return deq
