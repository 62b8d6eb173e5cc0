"""Parameters: the Hugging Face tensor names and shapes of a V4 model, seeded random values for
the built-in configs, and streaming safetensors reading and writing.

Tensors are produced one at a time (`WeightSource.get`) so that multi-GB models never have to sit
in memory twice.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from .config import ModelSpec
from .errors import ExportError
from .quant import FP4_BLOCK, QuantConfig, Quantized, check_fp8, check_scale, concat, dequantize, \
    fp4_scale_shape, fp8_scale_shape, stack

BF16 = np.dtype(ml_dtypes.bfloat16)

_ST_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16), "BF16": BF16,
    "I64": np.dtype(np.int64), "I32": np.dtype(np.int32), "I16": np.dtype(np.int16), "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn), "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "F8_E8M0": np.dtype(ml_dtypes.float8_e8m0fnu),
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}
_FLOAT_ST = ("F64", "F32", "F16", "BF16")
_INT_ST = ("I64", "I32")


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: its name in the checkpoint, shape, whether it is an integer table, and how
    the built-in configs draw it ("init")."""

    name: str
    shape: tuple[int, ...]
    init: str
    integer: bool = False


def param_specs(spec: ModelSpec) -> list[ParamSpec]:
    """All parameters of `DeepseekV4ForCausalLM` for `spec`, in its state_dict order."""
    d, hd, n = spec.hidden, spec.head_dim, spec.hc_mult
    hc_out = (2 + n) * n
    out = [ParamSpec("model.embed_tokens.weight", (spec.vocab, d), "embed")]
    for i in range(spec.n_layers):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        out += [
            ParamSpec(a + "sinks", (spec.heads,), "sinks"),
            ParamSpec(a + "q_a_proj.weight", (spec.q_lora, d), "linear"),
            ParamSpec(a + "q_a_norm.weight", (spec.q_lora,), "norm"),
            ParamSpec(a + "q_b_proj.weight", (spec.heads * hd, spec.q_lora), "linear"),
            ParamSpec(a + "kv_proj.weight", (hd, d), "linear"),
            ParamSpec(a + "kv_norm.weight", (hd,), "norm"),
            ParamSpec(a + "o_a_proj.weight", (spec.o_groups * spec.o_lora, spec.heads * hd // spec.o_groups),
                      "linear"),
            ParamSpec(a + "o_b_proj.weight", (d, spec.o_groups * spec.o_lora), "linear"),
        ]
        kind, ratio = spec.layer_kinds[i], spec.layer_ratios[i]
        if kind != "sliding":
            c = a + "compressor."
            width = (2 if kind == "csa" else 1) * hd
            out += [
                ParamSpec(c + "position_bias", (ratio, width), "position_bias"),
                ParamSpec(c + "kv_proj.weight", (width, d), "linear"),
                ParamSpec(c + "gate_proj.weight", (width, d), "linear"),
                ParamSpec(c + "kv_norm.weight", (hd,), "norm"),
            ]
        if kind == "csa":
            x = a + "compressor.indexer."
            di = spec.index_dim
            out += [
                ParamSpec(x + "position_bias", (ratio, 2 * di), "position_bias"),
                ParamSpec(x + "kv_proj.weight", (2 * di, d), "linear"),
                ParamSpec(x + "gate_proj.weight", (2 * di, d), "linear"),
                ParamSpec(x + "kv_norm.weight", (di,), "norm"),
                ParamSpec(x + "q_b_proj.weight", (spec.index_heads * di, spec.q_lora), "linear"),
                ParamSpec(x + "scorer.weights_proj.weight", (spec.index_heads, d), "linear"),
            ]
        m = p + "mlp."
        out.append(ParamSpec(m + "gate.weight", (spec.experts, d), "linear"))
        if spec.hash_layers[i]:
            out.append(ParamSpec(m + "gate.tid2eid", (spec.vocab, spec.top_k), "tid2eid", integer=True))
        else:
            out.append(ParamSpec(m + "gate.e_score_correction_bias", (spec.experts,), "score_bias"))
        f = spec.moe_inter
        out += [
            ParamSpec(m + "experts.gate_up_proj", (spec.experts, 2 * f, d), "linear"),
            ParamSpec(m + "experts.down_proj", (spec.experts, d, f), "linear"),
            ParamSpec(m + "shared_experts.gate_proj.weight", (f, d), "linear"),
            ParamSpec(m + "shared_experts.up_proj.weight", (f, d), "linear"),
            ParamSpec(m + "shared_experts.down_proj.weight", (d, f), "linear"),
            ParamSpec(p + "input_layernorm.weight", (d,), "norm"),
            ParamSpec(p + "post_attention_layernorm.weight", (d,), "norm"),
        ]
        for hc in ("attn_hc", "ffn_hc"):
            out += [
                ParamSpec(p + hc + ".fn", (hc_out, n * d), "linear"),
                ParamSpec(p + hc + ".base", (hc_out,), "hc_base"),
                ParamSpec(p + hc + ".scale", (3,), "hc_scale"),
            ]
    out += [
        ParamSpec("model.norm.weight", (d,), "norm"),
        ParamSpec("model.hc_head.hc_fn", (n, n * d), "linear"),
        ParamSpec("model.hc_head.hc_base", (n,), "hc_base"),
        ParamSpec("model.hc_head.hc_scale", (1,), "hc_scale"),
    ]
    if not spec.tie_embeddings:
        out.append(ParamSpec("lm_head.weight", (spec.vocab, d), "linear"))
    return out


class RandomWeights:
    """Seeded random parameters. Each tensor has its own generator seeded by (seed, crc32(name)),
    so any tensor can be produced alone, in any order, with the same values.

    Scales keep activations O(1): linear weights N(0, 1/fan_in); norm weights 1 + N(0, 0.1^2);
    sinks N(0, 1); compressor position biases N(0, 0.5^2); hc base N(0, 0.5^2) and hc scale
    U(0.5, 1.5); e_score_correction_bias N(0, 0.1^2) (large enough to change some top-k picks);
    tid2eid draws `top_k` distinct experts per token.
    """

    def __init__(self, specs: list[ParamSpec], seed: int, num_experts: int):
        self._specs = {s.name: s for s in specs}
        self._seed = seed
        self._experts = num_experts
        self.forms = {s.name: "int64" if s.integer else "float32" for s in specs}

    def get_stored(self, name: str) -> np.ndarray:
        return self.get(name)

    def get(self, name: str) -> np.ndarray:
        spec = self._specs[name]
        rng = np.random.default_rng([self._seed, zlib.crc32(name.encode())])
        shape = spec.shape
        if spec.init == "tid2eid":
            keys = rng.random((shape[0], self._experts))
            return np.argsort(keys, axis=1)[:, : shape[1]].astype(np.int64)
        if spec.init == "hc_scale":
            return rng.uniform(0.5, 1.5, size=shape).astype(np.float32)
        x = rng.standard_normal(size=shape, dtype=np.float32)
        if spec.init == "linear":
            x *= np.float32(1.0 / np.sqrt(shape[-1]))
        elif spec.init == "norm":
            x *= np.float32(0.1)
            x += np.float32(1.0)
        elif spec.init in ("position_bias", "hc_base"):
            x *= np.float32(0.5)
        elif spec.init == "score_bias":
            x *= np.float32(0.1)
        return x


@dataclass(frozen=True)
class _StEntry:
    path: str
    dtype: str
    shape: tuple[int, ...]
    offset: int  # absolute byte offset in the file
    nbytes: int


def read_safetensors_header(path: str) -> dict[str, _StEntry]:
    """Parses a safetensors header and checks that every tensor lies inside the file."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ExportError(f"{path}: truncated safetensors file (no header length)")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise ExportError(f"{path}: truncated safetensors file (header of {n} bytes, file of {size})")
            header = json.loads(f.read(n))
    except (OSError, ValueError) as err:
        raise ExportError(f"{path}: not a readable safetensors file ({err})") from err
    if not isinstance(header, dict):
        raise ExportError(f"{path}: safetensors header is not a JSON object")
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = info["dtype"], tuple(int(v) for v in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError) as err:
            raise ExportError(f"{path}: tensor '{name}': malformed header entry {info!r}") from err
        if dtype not in _ST_DTYPES:
            raise ExportError(f"{path}: tensor '{name}': unknown safetensors dtype {dtype!r}")
        nbytes = int(np.prod(shape, dtype=np.int64)) * _ST_DTYPES[dtype].itemsize
        if end - start != nbytes or 8 + n + end > size:
            raise ExportError(f"{path}: tensor '{name}': data range [{start}, {end}) does not hold "
                              f"{dtype}{list(shape)} inside a file of {size} bytes (truncated?)")
        out[name] = _StEntry(path, dtype, shape, 8 + n + start, nbytes)
    return out


# Checkpoint layouts: transformers' module names ("hf", what tide's parameter names are); DeepSeek's
# release names ("release": layers.N.attn.wq_a.weight, ffn.experts.E.w1.weight, ...); and what
# transformers' save_pretrained writes for a V4 model ("hf-release": the release names of the layers
# under a "model." prefix, with the top-level tensors under transformers' names).
LAYOUTS = ("hf", "release", "hf-release")

# transformers' name inside a layer -> DeepSeek's (the inverse of transformers' deepseek_v4 renames)
_LAYER_NAMES = {
    "self_attn.sinks": "attn.attn_sink",
    "self_attn.q_a_proj.weight": "attn.wq_a.weight",
    "self_attn.q_a_norm.weight": "attn.q_norm.weight",
    "self_attn.q_b_proj.weight": "attn.wq_b.weight",
    "self_attn.kv_proj.weight": "attn.wkv.weight",
    "self_attn.kv_norm.weight": "attn.kv_norm.weight",
    "self_attn.o_a_proj.weight": "attn.wo_a.weight",
    "self_attn.o_b_proj.weight": "attn.wo_b.weight",
    "self_attn.compressor.position_bias": "attn.compressor.ape",
    "self_attn.compressor.kv_proj.weight": "attn.compressor.wkv.weight",
    "self_attn.compressor.gate_proj.weight": "attn.compressor.wgate.weight",
    "self_attn.compressor.kv_norm.weight": "attn.compressor.norm.weight",
    "self_attn.compressor.indexer.position_bias": "attn.indexer.compressor.ape",
    "self_attn.compressor.indexer.kv_proj.weight": "attn.indexer.compressor.wkv.weight",
    "self_attn.compressor.indexer.gate_proj.weight": "attn.indexer.compressor.wgate.weight",
    "self_attn.compressor.indexer.kv_norm.weight": "attn.indexer.compressor.norm.weight",
    "self_attn.compressor.indexer.q_b_proj.weight": "attn.indexer.wq_b.weight",
    "self_attn.compressor.indexer.scorer.weights_proj.weight": "attn.indexer.weights_proj.weight",
    "mlp.gate.weight": "ffn.gate.weight",
    "mlp.gate.tid2eid": "ffn.gate.tid2eid",
    "mlp.gate.e_score_correction_bias": "ffn.gate.bias",
    "mlp.shared_experts.gate_proj.weight": "ffn.shared_experts.w1.weight",
    "mlp.shared_experts.up_proj.weight": "ffn.shared_experts.w3.weight",
    "mlp.shared_experts.down_proj.weight": "ffn.shared_experts.w2.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "attn_hc.fn": "hc_attn_fn", "attn_hc.base": "hc_attn_base", "attn_hc.scale": "hc_attn_scale",
    "ffn_hc.fn": "hc_ffn_fn", "ffn_hc.base": "hc_ffn_base", "ffn_hc.scale": "hc_ffn_scale",
}
# top-level tensors: transformers' name -> (release name, save_pretrained name)
_TOP_NAMES = {
    "model.embed_tokens.weight": ("embed.weight", "model.embed_tokens.weight"),
    "lm_head.weight": ("head.weight", "head.weight"),
    "model.norm.weight": ("norm.weight", "model.norm.weight"),
    "model.hc_head.hc_fn": ("hc_head_fn", "model.hc_head.hc_fn"),
    "model.hc_head.hc_base": ("hc_head_base", "model.hc_head.hc_base"),
    "model.hc_head.hc_scale": ("hc_head_scale", "model.hc_head.hc_scale"),
}
# the fused expert tensors and the per-expert release names that make them (gate_up = [w1; w3])
_EXPERT_PARTS = {"mlp.experts.gate_up_proj": ("w1", "w3"), "mlp.experts.down_proj": ("w2",)}
# a quantized weight's scale: "<base>.scale" (DeepSeek) or "<base>.weight_scale_inv" (transformers)
_SCALE_SUFFIXES = (".scale", ".weight_scale_inv")
_QUANT_ST = ("F8_E4M3", "I8", "U8")


def layout_names(name: str, layout: str, experts: int) -> list[list[str]]:
    """The checkpoint tensor name(s) holding parameter ``name`` in ``layout``: one list of
    candidates per part (an expert tensor of the release layouts has one part per expert and
    projection, in stacking order)."""
    if layout == "hf":
        return [[name]]
    if name in _TOP_NAMES:
        release, saved = _TOP_NAMES[name]
        return [[release] if layout == "release" else [saved, "model." + release]]
    prefix, _, inner = name.partition(".layers.")
    layer, _, rest = inner.partition(".")
    base = f"layers.{layer}." if layout == "release" else f"model.layers.{layer}."
    if rest in _EXPERT_PARTS:
        projections = _EXPERT_PARTS[rest]
        return [[f"{base}ffn.experts.{e}.{w}.weight"] for e in range(experts) for w in projections]
    return [[base + _LAYER_NAMES[rest]]]


def detect_layout(entries: dict, directory: str) -> str:
    """Which of LAYOUTS a checkpoint's tensor names follow."""
    if "embed.weight" in entries or any(k.startswith("layers.") for k in entries):
        return "release"
    if any(k.startswith("model.layers.") and (".attn." in k or ".ffn." in k) for k in entries):
        return "hf-release"
    if any(k.startswith("model.layers.") for k in entries) or "model.embed_tokens.weight" in entries:
        return "hf"
    shown = ", ".join(sorted(entries)[:3])
    raise ExportError(f"{directory}: the tensor names ({shown} ...) follow no DeepSeek-V4 layout tide reads "
                      f"(transformers' module names, DeepSeek's release names, or save_pretrained's)")


class CheckpointWeights:
    """Parameters read from a DeepSeek-V4 checkpoint directory (one or several safetensors files) in
    any of LAYOUTS, float or quantized (``quant``). Construction checks names, shapes, dtypes and
    scale shapes of every expected tensor without reading data; ``forms`` says how each parameter
    is stored: "float32", "bfloat16", "fp8", "fp4" or "int64"."""

    def __init__(self, directory: str, specs: list[ParamSpec], spec: ModelSpec, quant: QuantConfig | None = None):
        self._entries = _index_checkpoint(directory)
        self._specs = {s.name: s for s in specs}
        self._experts = spec.experts
        self._quant = quant
        self.layout = detect_layout(self._entries, directory)
        self._parts: dict[str, list[tuple[_StEntry, str, _StEntry | None]]] = {}
        self.forms: dict[str, str] = {}
        used: set[str] = set()
        hc_hint = f" (from hc_mult={spec.hc_mult}, hidden_size={spec.hidden})"
        for s in specs:
            candidates = layout_names(s.name, self.layout, spec.experts)
            parts = []
            for names in candidates:
                key = next((n for n in names if n in self._entries), None)
                if key is None:
                    raise ExportError(f"{directory}: tensor '{names[0]}' is missing from the safetensors files "
                                      f"(expected for {self.layout} layout; parameter {s.name}, shape {list(s.shape)})")
                used.add(key)
                parts.append(self._resolve(key, s, len(candidates), used, hc_hint))
            forms = {form for _, form, _ in parts}
            if len(forms) != 1:
                raise ExportError(f"{parts[0][0].path}: parameter '{s.name}': its tensors mix storage formats "
                                  f"{sorted(forms)}")
            self._parts[s.name] = parts
            self.forms[s.name] = forms.pop()
        # transformers ignores the MTP layer; a tied lm_head may still be stored.
        tolerated = set(_TOP_NAMES["lm_head.weight"]) | {"lm_head.weight"} if spec.tie_embeddings else set()
        unexpected = sorted(k for k in self._entries
                            if k not in used and k not in tolerated and not k.startswith(("mtp.", "model.mtp.")))
        if unexpected:
            shown = ", ".join(unexpected[:5]) + (" ..." if len(unexpected) > 5 else "")
            raise ExportError(f"{directory}: {len(unexpected)} unexpected tensor(s) for this config: {shown}")

    def _resolve(self, key: str, s: ParamSpec, n_parts: int, used: set, hc_hint: str):
        """(entry, form, scale entry) of one stored part of parameter ``s``, checked."""
        entry = self._entries[key]
        # the logical shape of one part: an expert's [N, K] (gate_up parts are half of 2F)
        shape = s.shape
        if n_parts > 1:
            per_expert = n_parts // self._experts
            shape = (s.shape[1] // per_expert, s.shape[2])
        if s.integer:
            if entry.dtype not in _INT_ST:
                raise ExportError(f"{entry.path}: tensor '{key}': expected dtype one of {list(_INT_ST)}, "
                                  f"got {entry.dtype}")
            self._check_shape(entry, key, shape, s, hc_hint)
            return entry, "int64", None
        if entry.dtype in _FLOAT_ST:
            self._check_shape(entry, key, shape, s, hc_hint)
            return entry, "bfloat16" if entry.dtype == "BF16" else "float32", None
        if entry.dtype not in _QUANT_ST:
            raise ExportError(f"{entry.path}: tensor '{key}': expected dtype one of {list(_FLOAT_ST)}, got "
                              f"{entry.dtype} (quantized weights: F8_E4M3, or packed FP4 as I8/U8, with scales)")
        if self._quant is None:
            raise ExportError(f"{entry.path}: tensor '{key}' is stored as {entry.dtype}, but config.json announces no "
                              f"quantization (no 'quantization_config')")
        expert = n_parts > 1
        fmt = "fp8" if entry.dtype == "F8_E4M3" else "fp4"
        if fmt == "fp4" and not (expert and self._quant.expert_dtype == "fp4"):
            what = "a routed expert" if expert else "this tensor"
            raise ExportError(f"{entry.path}: tensor '{key}' is stored as {entry.dtype} (packed FP4), which config.json "
                              f"does not announce for {what} (expert_dtype {self._quant.expert_dtype!r})")
        if fmt == "fp8" and expert and self._quant.expert_dtype == "fp4":
            raise ExportError(f"{entry.path}: tensor '{key}' is stored as F8_E4M3, but config.json announces FP4 "
                              f"routed experts (expert_dtype 'fp4')")
        n, k = shape[-2:]
        if fmt == "fp4":
            if k % FP4_BLOCK:
                raise ExportError(f"{entry.path}: tensor '{key}': FP4 rows of {k} elements are not whole "
                                  f"{FP4_BLOCK}-element scale blocks")
            stored, scale_shape = (*shape[:-1], k // 2), fp4_scale_shape(shape)
        else:
            stored, scale_shape = shape, fp8_scale_shape(shape, self._quant.block)
        if entry.shape != tuple(stored):
            raise ExportError(f"{entry.path}: tensor '{key}': expected shape {list(stored)} ({fmt} of a "
                              f"{list(shape)} weight), got {list(entry.shape)}")
        base = key[: -len(".weight")] if key.endswith(".weight") else key
        scale_key = next((base + suffix for suffix in _SCALE_SUFFIXES if base + suffix in self._entries), None)
        if scale_key is None:
            raise ExportError(f"{entry.path}: tensor '{key}' ({fmt}) has no scale tensor "
                              f"('{base}.scale' or '{base}.weight_scale_inv')")
        used.add(scale_key)
        scale = self._entries[scale_key]
        if scale.dtype not in ("F8_E8M0", "U8"):
            raise ExportError(f"{scale.path}: tensor '{scale_key}': expected dtype F8_E8M0 (power-of-two scales), "
                              f"got {scale.dtype}")
        if scale.shape != tuple(scale_shape):
            raise ExportError(f"{scale.path}: tensor '{scale_key}': expected shape {list(scale_shape)} (scales of "
                              f"{fmt} weight '{key}' {list(shape)}), got {list(scale.shape)}")
        return entry, fmt, scale

    @staticmethod
    def _check_shape(entry, key, shape, s, hc_hint):
        if entry.shape != tuple(shape):
            extra = hc_hint if "_hc." in s.name or "hc_head" in s.name or "hc_" in key else ""
            raise ExportError(f"{entry.path}: tensor '{key}': expected shape {list(shape)}{extra}, "
                              f"got {list(entry.shape)}")

    def _read(self, entry: _StEntry, dtype=None) -> np.ndarray:
        data = np.fromfile(entry.path, dtype=dtype or _ST_DTYPES[entry.dtype],
                           count=int(np.prod(entry.shape, dtype=np.int64)), offset=entry.offset)
        return data.reshape(entry.shape)

    def get_stored(self, name: str):
        """Parameter ``name`` as stored: a float32 / bfloat16 / int64 array, or ``Quantized``."""
        parts = self._parts[name]
        form = self.forms[name]
        if form not in ("fp8", "fp4"):
            arrays = [self._read(e) for e, _, _ in parts]
            data = arrays[0] if len(arrays) == 1 else self._join(arrays, name)
            if form == "int64":
                data = data.astype(np.int64)
                if data.size and (data.min() < 0 or data.max() >= self._experts):
                    raise ExportError(f"{parts[0][0].path}: tensor '{name}': expert ids must lie in "
                                      f"[0, {self._experts}), got values in [{data.min()}, {data.max()}]")
                return data
            return data if data.dtype == BF16 else data.astype(np.float32)
        quantized = []
        for entry, fmt, scale_entry in parts:
            data, scale = self._read(entry, np.uint8), self._read(scale_entry, np.uint8)
            check_scale(scale, entry.path, _entry_name(self._entries, entry) + " scale")
            if fmt == "fp8":
                check_fp8(data, entry.path, _entry_name(self._entries, entry))
            n, k = data.shape[-2], data.shape[-1] * (2 if fmt == "fp4" else 1)
            quantized.append(Quantized(fmt, data, scale, (*data.shape[:-2], n, k), self._quant.block))
        if len(quantized) == 1:
            return quantized[0]
        per_expert = len(quantized) // self._experts
        experts = [concat(quantized[e * per_expert:(e + 1) * per_expert], -2, parts[0][0].path, name)
                   if per_expert > 1 else quantized[e] for e in range(self._experts)]
        return stack(experts, parts[0][0].path, name)

    def _join(self, arrays: list[np.ndarray], name: str) -> np.ndarray:
        """Per-expert float tensors stacked into the fused [E, ...] parameter."""
        per_expert = len(arrays) // self._experts
        return np.stack([np.concatenate(arrays[e * per_expert:(e + 1) * per_expert], axis=0)
                         for e in range(self._experts)])

    def get(self, name: str) -> np.ndarray:
        """Parameter ``name`` as float32 (dequantized exactly) or int64."""
        value = self.get_stored(name)
        if isinstance(value, Quantized):
            return dequantize(value)
        return value if value.dtype == np.int64 else value.astype(np.float32)


def _entry_name(entries: dict, entry: _StEntry) -> str:
    return next(k for k, v in entries.items() if v is entry)


def _index_checkpoint(directory: str) -> dict[str, _StEntry]:
    index_path = os.path.join(directory, "model.safetensors.index.json")
    if os.path.isfile(index_path):
        try:
            with open(index_path, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ExportError(f"{index_path}: not a valid safetensors index ({err})") from err
        files = sorted(set(weight_map.values()))
        entries: dict[str, _StEntry] = {}
        for fname in files:
            path = os.path.join(directory, fname)
            if not os.path.isfile(path):
                raise ExportError(f"{index_path}: shard '{fname}' listed in weight_map does not exist")
            for name, entry in read_safetensors_header(path).items():
                if weight_map.get(name) == fname:
                    entries[name] = entry
        missing = sorted(k for k, v in weight_map.items() if k not in entries)
        if missing:
            raise ExportError(f"{index_path}: tensor '{missing[0]}' is listed in weight_map "
                              f"(shard '{weight_map[missing[0]]}') but not stored there")
        return entries
    files = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
    if not files:
        raise ExportError(f"{directory}: no *.safetensors files (and no model.safetensors.index.json)")
    entries = {}
    for fname in files:
        for name, entry in read_safetensors_header(os.path.join(directory, fname)).items():
            if name in entries:
                raise ExportError(f"{directory}: tensor '{name}' is stored in both "
                                  f"{os.path.basename(entries[name].path)} and {fname}")
            entries[name] = entry
    return entries


class SafetensorsWriter:
    """Writes one safetensors file tensor by tensor; the header is laid out up front from the
    declared (name, shape, numpy dtype) list, and `write` must then be called in that order."""

    def __init__(self, path: str, layout: list[tuple[str, tuple[int, ...], np.dtype]]):
        header: dict = {"__metadata__": {"format": "pt"}}
        offset = 0
        self._order = []
        for name, shape, dtype in layout:
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            header[name] = {"dtype": _ST_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            self._order.append((name, shape, dtype))
            offset += nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        self._file = open(path, "wb")
        self._file.write(struct.pack("<Q", len(blob)) + blob)
        self._next = 0

    def write(self, name: str, array: np.ndarray) -> None:
        exp_name, shape, dtype = self._order[self._next]
        if name != exp_name or array.shape != shape or array.dtype != dtype:
            raise ValueError(f"safetensors write out of order: got {name}, expected {exp_name}")
        np.ascontiguousarray(array).tofile(self._file)
        self._next += 1

    def close(self) -> None:
        self._file.close()
