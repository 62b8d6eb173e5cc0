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

BF16 = np.dtype(ml_dtypes.bfloat16)

_ST_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16), "BF16": BF16,
    "I64": np.dtype(np.int64), "I32": np.dtype(np.int32), "I16": np.dtype(np.int16), "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn), "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
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


class CheckpointWeights:
    """Parameters read from a Hugging Face checkpoint directory (one or several safetensors files).
    Construction checks names, shapes and dtypes of every expected tensor without reading data."""

    def __init__(self, directory: str, specs: list[ParamSpec], spec: ModelSpec):
        self._entries = _index_checkpoint(directory)
        self._specs = {s.name: s for s in specs}
        self._experts = spec.experts
        expected = set(self._specs)
        hc_hint = f" (from hc_mult={spec.hc_mult}, hidden_size={spec.hidden})"
        for s in specs:
            entry = self._entries.get(s.name)
            if entry is None:
                raise ExportError(f"{directory}: tensor '{s.name}' is missing from the safetensors files "
                                  f"(expected shape {list(s.shape)})")
            if entry.shape != s.shape:
                extra = hc_hint if "_hc." in s.name or "hc_head" in s.name else ""
                raise ExportError(f"{entry.path}: tensor '{s.name}': expected shape {list(s.shape)}{extra}, "
                                  f"got {list(entry.shape)}")
            allowed = _INT_ST if s.integer else _FLOAT_ST
            if entry.dtype not in allowed:
                raise ExportError(f"{entry.path}: tensor '{s.name}': expected dtype one of {list(allowed)}, "
                                  f"got {entry.dtype}")
        # transformers ignores the MTP layer; a tied lm_head may still be stored.
        tolerated = {"lm_head.weight"} if spec.tie_embeddings else set()
        unexpected = sorted(k for k in self._entries
                            if k not in expected and k not in tolerated and not k.startswith("mtp."))
        if unexpected:
            shown = ", ".join(unexpected[:5]) + (" ..." if len(unexpected) > 5 else "")
            raise ExportError(f"{directory}: {len(unexpected)} unexpected tensor(s) for this config: {shown}")

    def get(self, name: str) -> np.ndarray:
        entry = self._entries[name]
        data = np.fromfile(entry.path, dtype=_ST_DTYPES[entry.dtype],
                           count=int(np.prod(entry.shape, dtype=np.int64)), offset=entry.offset)
        data = data.reshape(entry.shape)
        if self._specs[name].integer:
            data = data.astype(np.int64)
            if data.size and (data.min() < 0 or data.max() >= self._experts):
                raise ExportError(f"{entry.path}: tensor '{name}': expert ids must lie in [0, {self._experts}), "
                                  f"got values in [{data.min()}, {data.max()}]")
            return data
        return data.astype(np.float32)


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
