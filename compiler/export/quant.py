"""Quantized checkpoints: the released DeepSeek-V4 formats, read exactly and validated.

Two block formats exist (docs/onnx-contract.md, section 7):

- FP8: ``float8_e4m3fn`` weights ``[..., N, K]`` with one ``float8_e8m0fnu`` scale per
  ``block_n x block_k`` block (``[..., ceil(N / block_n), ceil(K / block_k)]``); ``w = q * scale``.
- FP4: e2m1 codes packed two per byte, ``[..., N, K / 2]`` (the low nibble is element ``2j``), with one
  e8m0 scale per 32 consecutive elements of a row (``[..., N, K / 32]``).

A quantized tensor travels as its raw bytes (``uint8``): the e4m3 bit patterns, the packed nibbles
and the scales' exponent bytes, so nothing is rounded or widened on the way from the checkpoint to
the artifact. ``dequantize`` is the exact float32 value (every e4m3 and e2m1 value times a power of
two is a float32).
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

from .errors import ExportError

FP4_BLOCK = 32
SCALE_NAN = 255  # the one non-finite e8m0 value

# e4m3fn bit pattern -> value (0x7F / 0xFF are NaN); e2m1 code -> value; e8m0 byte -> 2^(byte - 127)
E4M3_VALUES = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float32)
E2M1_VALUES = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], dtype=np.float32)
E8M0_VALUES = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e8m0fnu).astype(np.float32)


@dataclass(frozen=True)
class QuantConfig:
    """A checkpoint's ``quantization_config`` (+ top-level ``expert_dtype``), validated."""

    block: tuple[int, int]      # FP8 weight_block_size (N, K)
    expert_dtype: str           # "fp8" or "fp4": the routed experts' format


@dataclass(frozen=True)
class Quantized:
    """One quantized tensor as stored: ``fmt`` "fp8" or "fp4", its data bytes and scale bytes
    (both uint8), and the logical [..., N, K] shape."""

    fmt: str
    data: np.ndarray
    scale: np.ndarray
    shape: tuple[int, ...]
    block: tuple[int, int]


def parse_quantization(raw: dict, where: str) -> QuantConfig | None:
    """The quantization of a config.json object (None for an unquantized checkpoint); a clear
    ExportError for any method, format or block size tide does not read exactly."""
    qc = raw.get("quantization_config")
    expert_dtype = raw.get("expert_dtype")
    if qc is None:
        if expert_dtype not in (None, "bf16", "bfloat16", "fp32", "float32"):
            raise ExportError(f"{where}: field 'expert_dtype': {expert_dtype!r} needs a 'quantization_config' "
                              f"(none given)")
        return None
    if not isinstance(qc, dict):
        raise ExportError(f"{where}: field 'quantization_config': expected an object, got {qc!r}")

    def field(name, expected, allowed):
        value = qc.get(name)
        if value not in allowed:
            raise ExportError(f"{where}: field 'quantization_config.{name}': expected {expected}, got {value!r}")
        return value

    field("quant_method", "'fp8' (DeepSeek's block FP8)", ("fp8",))
    field("fmt", "'e4m3'", ("e4m3", None))
    field("scale_fmt", "'ue8m0' (power-of-two scales)", ("ue8m0",))
    field("activation_scheme", "'dynamic'", ("dynamic", None))
    block = qc.get("weight_block_size")
    if block != [128, 128]:
        raise ExportError(f"{where}: field 'quantization_config.weight_block_size': expected [128, 128] "
                          f"(DeepSeek-V4's FP8 blocks), got {block!r}")
    if expert_dtype not in (None, "fp8", "fp4"):
        raise ExportError(f"{where}: field 'expert_dtype': expected 'fp4' or 'fp8', got {expert_dtype!r}")
    return QuantConfig(block=(128, 128), expert_dtype=expert_dtype or "fp8")


def fp8_scale_shape(shape: tuple[int, ...], block: tuple[int, int]) -> tuple[int, ...]:
    *lead, n, k = shape
    return (*lead, -(-n // block[0]), -(-k // block[1]))


def fp4_scale_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    *lead, n, k = shape
    return (*lead, n, k // FP4_BLOCK)


def check_scale(scale: np.ndarray, where: str, name: str) -> None:
    """Refuses a NaN e8m0 scale (byte 255), naming the tensor and the first bad block."""
    bad = np.flatnonzero(scale.reshape(-1) == SCALE_NAN)
    if bad.size:
        index = tuple(int(i) for i in np.unravel_index(bad[0], scale.shape))
        raise ExportError(f"{where}: tensor '{name}': {bad.size} non-finite (NaN) e8m0 scale(s), the first at "
                          f"block {list(index)}")


def check_fp8(data: np.ndarray, where: str, name: str) -> None:
    """Refuses NaN e4m3 weights (bit patterns 0x7F and 0xFF)."""
    bad = np.flatnonzero((data.reshape(-1) & 0x7F) == 0x7F)
    if bad.size:
        index = tuple(int(i) for i in np.unravel_index(bad[0], data.shape))
        raise ExportError(f"{where}: tensor '{name}': {bad.size} NaN float8_e4m3fn value(s), the first at "
                          f"{list(index)}")


def dequantize(q: Quantized) -> np.ndarray:
    """The exact float32 weight of ``q``."""
    if q.fmt == "fp8":
        values = E4M3_VALUES[q.data]
        *lead, n, k = q.shape
        scale = E8M0_VALUES[q.scale]
        scale = np.repeat(np.repeat(scale, q.block[0], axis=-2), q.block[1], axis=-1)[..., :n, :k]
        return values * scale
    codes = np.stack([q.data & 0xF, q.data >> 4], axis=-1).reshape(q.shape)
    return E2M1_VALUES[codes] * np.repeat(E8M0_VALUES[q.scale], FP4_BLOCK, axis=-1)


def concat(parts: list[Quantized], axis: int, where: str, name: str) -> Quantized:
    """Quantized tensors of one format joined along a logical axis (-2: N, or a new leading axis
    with ``axis`` 0 and ``stack``) without touching the bytes. N must be a whole number of scale
    blocks for FP8 along -2."""
    fmt = {p.fmt for p in parts}
    if len(fmt) != 1:
        raise ExportError(f"{where}: tensor '{name}': its parts mix formats {sorted(fmt)}")
    first = parts[0]
    if axis == -2 and first.fmt == "fp8" and any(p.shape[-2] % first.block[0] for p in parts[:-1]):
        raise ExportError(f"{where}: tensor '{name}': FP8 parts of {[p.shape[-2] for p in parts]} rows cannot be "
                          f"joined on whole {first.block[0]}-row scale blocks")
    data = np.concatenate([p.data for p in parts], axis=axis)
    scale = np.concatenate([p.scale for p in parts], axis=axis)
    shape = list(first.shape)
    shape[axis] = sum(p.shape[axis] for p in parts)
    return Quantized(first.fmt, data, scale, tuple(shape), first.block)


def stack(parts: list[Quantized], where: str, name: str) -> Quantized:
    """Quantized tensors of one format and shape stacked on a new leading axis (the experts)."""
    fmt = {(p.fmt, p.shape) for p in parts}
    if len(fmt) != 1:
        raise ExportError(f"{where}: tensor '{name}': experts differ in format or shape: {sorted(fmt)}")
    first = parts[0]
    return Quantized(first.fmt, np.stack([p.data for p in parts]), np.stack([p.scale for p in parts]),
                     (len(parts), *first.shape), first.block)
