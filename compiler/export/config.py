"""Model configurations: the built-in ones, reading config.json, and the checks that decide what
the exporter can honour.

Configs are parsed with transformers' own `DeepseekV4Config` (the reference of record), so legacy
fields (`compress_ratios`, `num_hash_layers`, `qk_rope_head_dim`, ...) mean exactly what they mean
to `DeepseekV4ForCausalLM`. The result is a flat, frozen `ModelSpec` the graph builder reads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .errors import ExportError

MODEL_TYPE = "deepseek_v4"
# Default decode-state capacity: min(max_position_embeddings, this).
DEFAULT_MAX_SEQ_LEN_CAP = 4096

SLIDING, CSA, HCA = "sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention"
_LEGACY_RATIOS = {0: SLIDING, 4: CSA, 128: HCA}

_COMMON = dict(
    num_key_value_heads=1,
    n_shared_experts=1,
    scoring_func="sqrtsoftplus",
    norm_topk_prob=True,
    rope_theta=10000.0,
    compress_rope_theta=160000.0,
    hc_mult=4,
    hc_sinkhorn_iters=20,
    hc_eps=1.0e-6,
    rms_norm_eps=1.0e-6,
    hidden_act="silu",
    tie_word_embeddings=False,
    num_nextn_predict_layers=0,
    bos_token_id=0,
    eos_token_id=1,
)

# What flash-2layer and pro-2layer share: the real V4 attention schedule (one CSA, one HCA layer),
# indexer, rope and window, with 8 routed experts.
_V4_2LAYER = dict(
    _COMMON,
    vocab_size=129280,
    num_hidden_layers=2,
    head_dim=512,
    partial_rotary_factor=64 / 512,
    num_experts_per_tok=6,
    n_routed_experts=8,
    swiglu_limit=10.0,
    layer_types=[CSA, HCA],
    mlp_layer_types=["hash_moe", "moe"],
    compress_rates={CSA: 4, HCA: 128},
    sliding_window=128,
    index_n_heads=64,
    index_head_dim=128,
    max_position_embeddings=1048576,
    rope_parameters={"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 65536},
)


def _flash_layer(i: int) -> tuple[str, str]:
    """Layer i of the released V4-Flash schedule: 0-1 sliding only, then CSA on even and HCA on odd
    layers; hash-routed MoE on layers 0-2 (docs/deepseek-v4.md, layer schedule)."""
    return (SLIDING if i < 2 else CSA if i % 2 == 0 else HCA), ("hash_moe" if i < 3 else "moe")


def _pro_layer(i: int) -> tuple[str, str]:
    """Layer i of the released V4-Pro schedule: 0-1 HCA, then CSA on even and HCA on odd layers;
    hash-routed MoE on layers 0-2."""
    return (HCA if i < 2 or i % 2 else CSA), ("hash_moe" if i < 3 else "moe")


def _tiny_layer(i: int) -> tuple[str, str]:
    """tiny's pattern continued: a sliding layer, then CSA on odd and HCA on even layers; hash MoE on 0-1."""
    return (SLIDING if i == 0 else CSA if i % 2 else HCA), ("hash_moe" if i < 2 else "moe")


def _two_layer(i: int) -> tuple[str, str]:
    """flash-2layer's / pro-2layer's pattern continued: CSA on even, HCA on odd layers; hash MoE on 0."""
    return (CSA if i % 2 == 0 else HCA), ("hash_moe" if i == 0 else "moe")


# What layer i of each built-in config is (attention kind, MoE kind): `--layers N` takes the first N.
LAYER_SCHEDULES = {"tiny": _tiny_layer, "flash-2layer": _two_layer, "pro-2layer": _two_layer,
                   "flash": _flash_layer, "pro": _pro_layer}


def _schedule(name: str, n_layers: int) -> dict:
    kinds = [LAYER_SCHEDULES[name](i) for i in range(n_layers)]
    return {"num_hidden_layers": n_layers, "layer_types": [k for k, _ in kinds],
            "mlp_layer_types": [m for _, m in kinds]}


BUILTIN_CONFIGS: dict[str, dict] = {
    # Every code path on a model that runs in milliseconds: a sliding-only layer, CSA (ratio 4,
    # top-4 of the visible entries, 16 indexer heads so top-k has no ties) and HCA (ratio 16)
    # layers, hash-routed and learned-routed MoE, a 16-token window, and a YaRN range that
    # actually bends the compress-rope frequencies. swiglu_limit is low enough that the clamps
    # fire on random activations.
    "tiny": dict(
        _COMMON,
        vocab_size=512,
        hidden_size=128,
        moe_intermediate_size=64,
        num_hidden_layers=5,
        num_attention_heads=8,
        head_dim=64,
        partial_rotary_factor=0.25,
        q_lora_rank=64,
        o_groups=2,
        o_lora_rank=32,
        num_experts_per_tok=4,
        n_routed_experts=16,
        routed_scaling_factor=1.5,
        swiglu_limit=2.0,
        layer_types=[SLIDING, CSA, HCA, CSA, HCA],
        mlp_layer_types=["hash_moe", "hash_moe", "moe", "moe", "moe"],
        compress_rates={CSA: 4, HCA: 16},
        sliding_window=16,
        index_n_heads=16,
        index_head_dim=32,
        index_topk=4,
        max_position_embeddings=256,
        rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
    ),
    # V4-Flash attention dims (docs/deepseek-v4.md), one CSA and one HCA layer, 8 routed experts.
    "flash-2layer": dict(
        _V4_2LAYER,
        hidden_size=4096,
        moe_intermediate_size=2048,
        num_attention_heads=64,
        q_lora_rank=1024,
        o_groups=8,
        o_lora_rank=1024,
        routed_scaling_factor=1.5,
        index_topk=512,
    ),
    # V4-Pro attention dims, one CSA and one HCA layer, 8 routed experts.
    "pro-2layer": dict(
        _V4_2LAYER,
        hidden_size=7168,
        moe_intermediate_size=3072,
        num_attention_heads=128,
        q_lora_rank=1536,
        o_groups=16,
        o_lora_rank=1024,
        routed_scaling_factor=2.5,
        index_topk=1024,
    ),
}
# Full depth with the released layer schedules (43 and 61 layers) at the 2-layer configs' widths and
# 8 routed experts; `--layers N` exports the first N layers of either.
BUILTIN_CONFIGS["flash"] = {**BUILTIN_CONFIGS["flash-2layer"], **_schedule("flash", 43)}
BUILTIN_CONFIGS["pro"] = {**BUILTIN_CONFIGS["pro-2layer"], **_schedule("pro", 61)}


@dataclass(frozen=True)
class ModelSpec:
    """Everything the graph builder needs, validated. Layer kinds are "sliding", "csa", "hca"."""

    vocab: int
    hidden: int
    n_layers: int
    heads: int
    head_dim: int
    rope_dim: int
    q_lora: int
    o_groups: int
    o_lora: int
    window: int
    layer_kinds: tuple[str, ...]
    layer_ratios: tuple[int, ...]
    hash_layers: tuple[bool, ...]
    experts: int
    top_k: int
    moe_inter: int
    routed_scaling: float
    swiglu_limit: float
    index_heads: int
    index_dim: int
    index_topk: int
    hc_mult: int
    hc_iters: int
    hc_eps: float
    rms_eps: float
    tie_embeddings: bool
    max_position_embeddings: int
    main_inv_freq: tuple[float, ...]
    main_rope_scale: float
    compress_inv_freq: tuple[float, ...]
    compress_rope_scale: float


def _config_class():
    from transformers import DeepseekV4Config

    return DeepseekV4Config


def builtin_config(name: str, overrides: dict | None = None, layers: int | None = None):
    """The transformers config of a built-in model, with optional field overrides (tests use them
    to shrink vocab and expert counts); ``layers`` keeps the first N layers of the model's schedule
    (``LAYER_SCHEDULES``: continued past the config's own depth)."""
    kwargs = dict(BUILTIN_CONFIGS[name])
    if layers is not None:
        if not isinstance(layers, int) or isinstance(layers, bool) or layers < 1:
            raise ExportError(f"layers: expected a positive integer, got {layers!r}")
        kwargs.update(_schedule(name, layers))
    kwargs.update(overrides or {})
    return _make_config(kwargs, f"built-in config '{name}'")


def load_config_json(path: str):
    """Reads a checkpoint's config.json into a `DeepseekV4Config` and its quantization
    (``tide.compiler.export.quant.QuantConfig``, None for a float checkpoint)."""
    from .quant import parse_quantization

    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except json.JSONDecodeError as err:
        raise ExportError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(raw, dict):
        raise ExportError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    model_type = raw.get("model_type")
    if model_type != MODEL_TYPE:
        raise ExportError(f"{path}: field 'model_type': expected '{MODEL_TYPE}', got {model_type!r}")
    ratios = raw.get("compress_ratios")
    if raw.get("layer_types") is None and isinstance(ratios, list):
        bad = [r for r in ratios if r not in _LEGACY_RATIOS]
        if bad:
            raise ExportError(f"{path}: field 'compress_ratios': expected values in {sorted(_LEGACY_RATIOS)}, "
                              f"got {bad}")
    quant = parse_quantization(raw, path)
    kwargs = {k: v for k, v in raw.items()
              if k not in ("model_type", "architectures", "transformers_version", "quantization_config", "expert_dtype")}
    return _make_config(kwargs, path), quant


def _make_config(kwargs: dict, where: str):
    cls = _config_class()
    try:
        return cls(**kwargs)
    except Exception as err:  # transformers' strict dataclass raises several error types
        raise ExportError(f"{where}: invalid DeepSeek-V4 config: {err}") from err


def default_max_seq_len(spec: ModelSpec) -> int:
    return min(spec.max_position_embeddings, DEFAULT_MAX_SEQ_LEN_CAP)


def _check(cond: bool, where: str, field: str, expected: str, got) -> None:
    if not cond:
        raise ExportError(f"{where}: field '{field}': expected {expected}, got {got!r}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def spec_from_config(cfg, where: str) -> ModelSpec:
    """Validates a `DeepseekV4Config` against what the exporter honours and flattens it."""
    _check(cfg.num_key_value_heads == 1, where, "num_key_value_heads", "1 (shared-KV MQA)",
           cfg.num_key_value_heads)
    _check(cfg.scoring_func == "sqrtsoftplus", where, "scoring_func", "'sqrtsoftplus'", cfg.scoring_func)
    _check(cfg.hidden_act == "silu", where, "hidden_act", "'silu'", cfg.hidden_act)
    _check(not cfg.mlp_bias, where, "mlp_bias", "false", cfg.mlp_bias)
    for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "head_dim",
                  "q_lora_rank", "o_groups", "o_lora_rank", "sliding_window", "n_routed_experts",
                  "num_experts_per_tok", "moe_intermediate_size", "index_n_heads", "index_head_dim",
                  "index_topk", "hc_mult", "hc_sinkhorn_iters", "max_position_embeddings"):
        value = getattr(cfg, field)
        _check(_is_int(value) and value >= 1, where, field, "a positive integer", value)
    rope_dim = cfg.qk_rope_head_dim
    _check(0 < rope_dim <= cfg.head_dim and rope_dim % 2 == 0, where, "partial_rotary_factor",
           f"a rope dim (head_dim * factor) that is even and in (0, {cfg.head_dim}]",
           f"{cfg.partial_rotary_factor} (rope dim {rope_dim})")
    _check(cfg.index_head_dim >= rope_dim, where, "index_head_dim", f">= the rope dim {rope_dim}",
           cfg.index_head_dim)
    _check((cfg.num_attention_heads * cfg.head_dim) % cfg.o_groups == 0, where, "o_groups",
           f"a divisor of num_attention_heads * head_dim = {cfg.num_attention_heads * cfg.head_dim}",
           cfg.o_groups)
    _check(cfg.num_experts_per_tok <= cfg.n_routed_experts, where, "num_experts_per_tok",
           f"<= n_routed_experts ({cfg.n_routed_experts})", cfg.num_experts_per_tok)

    kinds, ratios = [], []
    short = {SLIDING: "sliding", CSA: "csa", HCA: "hca"}
    for i, layer_type in enumerate(cfg.layer_types):
        _check(layer_type in short, where, f"layer_types[{i}]", f"one of {sorted(short)}", layer_type)
        kinds.append(short[layer_type])
        if layer_type == SLIDING:
            ratios.append(0)
            continue
        rate = (cfg.compress_rates or {}).get(layer_type)
        _check(_is_int(rate) and rate >= 1, where, f"compress_rates['{layer_type}']",
               "a positive integer compression ratio", rate)
        ratios.append(rate)
    hash_layers = []
    for i, mlp_type in enumerate(cfg.mlp_layer_types):
        _check(mlp_type in ("hash_moe", "moe"), where, f"mlp_layer_types[{i}]", "'hash_moe' or 'moe'", mlp_type)
        hash_layers.append(mlp_type == "hash_moe")

    main_freq, main_scale, comp_freq, comp_scale = _rope_tables(cfg, where)
    return ModelSpec(
        vocab=cfg.vocab_size, hidden=cfg.hidden_size, n_layers=cfg.num_hidden_layers,
        heads=cfg.num_attention_heads, head_dim=cfg.head_dim, rope_dim=rope_dim, q_lora=cfg.q_lora_rank,
        o_groups=cfg.o_groups, o_lora=cfg.o_lora_rank, window=cfg.sliding_window,
        layer_kinds=tuple(kinds), layer_ratios=tuple(ratios), hash_layers=tuple(hash_layers),
        experts=cfg.n_routed_experts, top_k=cfg.num_experts_per_tok, moe_inter=cfg.moe_intermediate_size,
        routed_scaling=float(cfg.routed_scaling_factor), swiglu_limit=float(cfg.swiglu_limit),
        index_heads=cfg.index_n_heads, index_dim=cfg.index_head_dim, index_topk=cfg.index_topk,
        hc_mult=cfg.hc_mult, hc_iters=cfg.hc_sinkhorn_iters, hc_eps=float(cfg.hc_eps),
        rms_eps=float(cfg.rms_norm_eps), tie_embeddings=bool(cfg.tie_word_embeddings),
        max_position_embeddings=cfg.max_position_embeddings,
        main_inv_freq=main_freq, main_rope_scale=main_scale,
        compress_inv_freq=comp_freq, compress_rope_scale=comp_scale,
    )


def _rope_tables(cfg, where: str):
    """inv_freq and cos/sin scaling of the "main" and "compress" ropes, computed by transformers'
    own `DeepseekV4RotaryEmbedding` so every rope type and quirk matches the reference."""
    for label in ("main", "compress"):
        params = (cfg.rope_parameters or {}).get(label) or {}
        rope_type = params.get("rope_type", "default")
        _check(rope_type not in ("dynamic", "longrope"), where, f"rope_parameters['{label}']['rope_type']",
               "a rope whose frequencies do not depend on the sequence length", rope_type)
    from transformers.models.deepseek_v4.modeling_deepseek_v4 import DeepseekV4RotaryEmbedding

    try:
        rotary = DeepseekV4RotaryEmbedding(cfg)
    except Exception as err:
        raise ExportError(f"{where}: field 'rope_parameters': cannot build the rope tables: {err}") from err
    out = []
    for label in ("main", "compress"):
        inv_freq = getattr(rotary, f"{label}_inv_freq").float().numpy()
        out.append(tuple(float(v) for v in inv_freq))
        out.append(float(getattr(rotary, f"{label}_attention_scaling")))
    return tuple(out)
