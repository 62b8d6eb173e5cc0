"""A built-in config's random weights as a checkpoint in DeepSeek-V4's released format: the release
tensor names, FP8 linears with 128 x 128 power-of-two block scales, FP4 routed experts with 1 x 32
scales, bf16 and float32 where the releases keep them, and the ``quantization_config`` /
``expert_dtype`` keys of the release's config.json (docs/onnx-contract.md, section 7).

The benchmark's quantized whole-model rows run this checkpoint: tide from its export, transformers
through its own FP8 dequantizer. Tensors are quantized and written one at a time.

    python -m tide.bench.quantized flash-2layer OUT_DIR [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import struct

import ml_dtypes
import numpy as np

from ..compiler.export.config import builtin_config, spec_from_config
from ..compiler.export.weights import BF16, RandomWeights, layout_names, param_specs

FP8_BLOCK, FP4_BLOCK = 128, 32
# transformers' names of the parameters the releases store in FP8 and bf16 (the rest: float32)
_FP8 = ("q_a_proj.weight", "q_b_proj.weight", "kv_proj.weight", "o_a_proj.weight", "o_b_proj.weight",
        "shared_experts.gate_proj.weight", "shared_experts.up_proj.weight", "shared_experts.down_proj.weight")
_BF16 = ("embed_tokens.weight", "lm_head.weight", "norm.weight", "gate.weight", "gate_proj.weight",
         "weights_proj.weight")
QUANTIZATION_CONFIG = {"quant_method": "fp8", "fmt": "e4m3", "scale_fmt": "ue8m0", "weight_block_size": [128, 128],
                       "activation_scheme": "dynamic"}


def _e8m0(amax: np.ndarray, top: float) -> np.ndarray:
    """Exponent bytes of the power-of-two scales 2^ceil(log2(amax / top)) (1 for an all-zero block)."""
    exp = np.where(amax > 0, np.ceil(np.log2(np.maximum(amax, 1e-38) / top)), 0)
    return (exp + 127).astype(np.uint8)


def quantize_fp8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``w [N, K]`` -> e4m3 bytes [N, K] and e8m0 bytes [ceil(N/128), ceil(K/128)] (rounded to nearest even)."""
    n, k = w.shape
    nb, kb = -(-n // FP8_BLOCK), -(-k // FP8_BLOCK)
    padded = np.zeros((nb * FP8_BLOCK, kb * FP8_BLOCK), np.float32)
    padded[:n, :k] = w
    blocks = np.abs(padded.reshape(nb, FP8_BLOCK, kb, FP8_BLOCK)).max(axis=(1, 3))
    scale = _e8m0(blocks, 448.0)
    full = np.repeat(np.repeat(np.exp2(scale.astype(np.float32) - 127), FP8_BLOCK, 0), FP8_BLOCK, 1)[:n, :k]
    return (w / full).astype(ml_dtypes.float8_e4m3fn).view(np.uint8), scale


def quantize_fp4(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``w [N, K]`` -> packed e2m1 bytes [N, K/2] (element 2j in the low nibble) and e8m0 bytes [N, K/32]."""
    n, k = w.shape
    blocks = w.reshape(n, k // FP4_BLOCK, FP4_BLOCK)
    scale = _e8m0(np.abs(blocks).max(axis=2), 6.0)
    codes = (blocks / np.exp2(scale.astype(np.float32) - 127)[..., None]).astype(ml_dtypes.float4_e2m1fn)
    codes = codes.view(np.uint8).reshape(n, k) & 0xF
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8), scale


def _stored(name: str, value: np.ndarray, expert: bool) -> list[tuple[str, str, np.ndarray]]:
    """(suffix, safetensors dtype, bytes) of one release tensor: "" for the data, ".scale"."""
    if expert:
        q, s = quantize_fp4(value)
        return [("", "I8", q.view(np.int8)), (".scale", "F8_E8M0", s)]
    if name.endswith(_FP8):
        q, s = quantize_fp8(value)
        return [("", "F8_E4M3", q), (".scale", "F8_E8M0", s)]
    if value.dtype == np.int64:
        return [("", "I64", value)]
    if name.endswith(_BF16):
        return [("", "BF16", value.astype(BF16))]
    return [("", "F32", value.astype(np.float32))]


def write(model_name: str, directory: str, seed: int = 0) -> None:
    """Writes ``directory/config.json`` and ``directory/model.safetensors``."""
    cfg = builtin_config(model_name)
    spec = spec_from_config(cfg, model_name)
    specs = param_specs(spec)
    weights = RandomWeights(specs, seed, spec.experts)

    def tensors():
        """(release name, suffix, dtype, array) of every tensor, parameter by parameter."""
        for p in specs:
            names = layout_names(p.name, "release", spec.experts)
            value = weights.get(p.name)
            if len(names) == 1:
                for suffix, dt, arr in _stored(p.name, value, False):
                    yield names[0][0].removesuffix(".weight") + suffix if suffix else names[0][0], dt, arr
                continue
            per_expert = len(names) // spec.experts          # gate_up: w1 then w3; down: w2
            for i, (name,) in enumerate(names):
                e, part = divmod(i, per_expert)
                rows = value.shape[1] // per_expert
                for suffix, dt, arr in _stored(p.name, value[e, part * rows:(part + 1) * rows], True):
                    yield name.removesuffix(".weight") + suffix if suffix else name, dt, arr

    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, dt, arr in tensors():   # a first pass for the header (sizes only)
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, ".model.safetensors.tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for _, _, arr in tensors():
            f.write(np.ascontiguousarray(arr).tobytes())
    os.replace(tmp, os.path.join(directory, "model.safetensors"))
    config = cfg.to_dict()
    # torch_dtype as the releases give it (transformers loads the e8m0 scales only with a dtype set)
    config.update(quantization_config=QUANTIZATION_CONFIG, expert_dtype="fp4", architectures=["DeepseekV4ForCausalLM"],
                  torch_dtype="bfloat16")
    with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a built-in config: tiny, flash-2layer, pro-2layer")
    parser.add_argument("out", help="the checkpoint directory to write")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    write(args.model, args.out, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
