"""Decoding the block-quantized weight formats inside kernels (no kernel here): TensorIR expression
helpers shared by ``tide.ops.dequantize_fp8``, ``tide.ops.dequantize_fp4`` and the kernels that read
quantized weights directly (``tide.ops.linear`` with an ``fp8`` weight).

The formats (docs/onnx-contract.md, section 7): FP8 weights are ``float8_e4m3fn`` bit patterns,
FP4 weights e2m1 codes packed two per byte (element 2j in the low nibble), and every scale an e8m0
exponent byte ``s`` worth ``2^(s - 127)``; all travel as uint8.

Two decodings of the same values:

- exact and portable (``e4m3``, ``e2m1``, ``e8m0``): integer field extraction and a power of two
  built from float32 exponent bits; any target's code generator handles it;
- fast (``e4m3_half``, ``e2m1_half``, ``e8m0_pow2``): the code's bits moved into a float16 whose
  value is the code's value times a fixed power of two (e4m3: 2^-8, e2m1: 2^-14; subnormal codes
  become float16 subnormals, which the float16 -> float32 conversion instruction handles exactly),
  the power folded into the scale. On x86 with F16C that is a sign extension, a shift, a mask and
  one ``vcvtph2ps`` per eight weights.
"""

from __future__ import annotations

# e8m0 exponent bytes the fast path represents: 2^(s - 127 + 14) must be a normal float32
SCALE_MAX = 240
E4M3_SHIFT = 8    # e4m3_half(b) * 2^8 == e4m3 value of b
E2M1_SHIFT = 14   # e2m1_half(c) * 2^14 == e2m1 value of c


def pow2(e):
    """``2^e`` as float32 for an int32 expression ``e`` in [-126, 127]."""
    from tvm.script import tirx as T

    return T.reinterpret("float32", T.shift_left(e + 127, 23))


def byte(b):
    """The uint8 expression ``b`` as an int32 in [0, 256), whether the target widens uint8 with a
    zero or (Ascend, whose integers are signless) a sign extension."""
    from tvm.script import tirx as T

    return T.bitwise_and(T.Cast("int32", b), 255)


def e8m0(s):
    """The exact float32 value ``2^(s - 127)`` of an e8m0 byte (uint8 expression; 255, NaN, is refused
    before compile and decodes to 2^128 = inf)."""
    from tvm.script import tirx as T

    si = byte(s)
    return T.if_then_else(si == 0, T.float32(2.0 ** -127), T.reinterpret("float32", T.shift_left(si, 23)))


def e4m3(b):
    """The exact float32 value of a float8_e4m3fn bit pattern (uint8 expression)."""
    from tvm.script import tirx as T

    bi = byte(b)
    e, m = T.bitwise_and(T.shift_right(bi, 3), 15), T.bitwise_and(bi, 7)
    mag = T.if_then_else(e == 0, T.Cast("float32", m) * T.float32(2.0 ** -9),
                         T.Cast("float32", m + 8) * pow2(e - 10))
    return T.if_then_else(T.bitwise_and(bi, 128) != 0, -mag, mag)


def e2m1(c):
    """The exact float32 value of an e2m1 code (int32 expression in [0, 16))."""
    from tvm.script import tirx as T

    e, m = T.bitwise_and(T.shift_right(c, 1), 3), T.bitwise_and(c, 1)
    mag = T.if_then_else(e == 0, T.Cast("float32", m) * T.float32(0.5), T.Cast("float32", m + 2) * pow2(e - 2))
    return T.if_then_else(T.bitwise_and(c, 8) != 0, -mag, mag)


def e4m3_half(b):
    """The e4m3 bit pattern ``b`` (uint8 expression) as float32 of its value times 2^-8."""
    from tvm.script import tirx as T

    bits = T.bitwise_and(T.shift_left(T.Cast("int16", T.reinterpret("int8", b)), T.int16(7)), T.int16(-16512))
    return T.Cast("float32", T.reinterpret("float16", bits))


def e2m1_half(byte, high: bool):
    """The low (``high`` False) or high e2m1 code of the packed uint8 ``byte`` as float32 of its
    value times 2^-14."""
    from tvm.script import tirx as T

    v = T.Cast("uint16", byte)
    if high:
        bits = T.bitwise_or(T.shift_left(T.bitwise_and(v, T.uint16(0x80)), T.uint16(8)),
                            T.shift_left(T.bitwise_and(v, T.uint16(0x70)), T.uint16(5)))
    else:
        bits = T.bitwise_or(T.shift_left(T.bitwise_and(v, T.uint16(0x08)), T.uint16(12)),
                            T.shift_left(T.bitwise_and(v, T.uint16(0x07)), T.uint16(9)))
    return T.Cast("float32", T.reinterpret("float16", bits))


def e8m0_pow2(s, shift: int):
    """``2^(s - 127 + shift)`` as float32 for an e8m0 byte ``s`` (uint8 expression) with
    ``s + shift`` in [1, 254] (scales up to SCALE_MAX with the shifts above)."""
    from tvm.script import tirx as T

    return T.reinterpret("float32", T.shift_left(T.Cast("int32", s) + shift, 23))
