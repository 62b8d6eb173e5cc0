"""tide's own Relax converters for the transformer ops of ONNX opsets 17-25 that exporters write
today (``torch.onnx.export(..., dynamo=True, opset_version=23)``): ``Attention`` (opsets 23, 24,
25), ``RotaryEmbedding`` (23), ``RMSNormalization`` (23) and ``LayerNormalization`` (17).

Runs inside ``tide.compiler.relax_import.to_relax`` (TVM's ONNX frontend calls them through its
convert map, see ``converter_classes``), after ``tide.compiler.onnx_import.specialize`` gave every
tensor a static shape; what they build is ordinary Relax (``relax.op.*``) that the later stages
(substitute, legalize and fuse, schedule) treat like any other graph. Each converter follows the
ONNX standard's text and its reference implementation (``onnx.reference.ops``) operation for
operation, in the standard's precision; a mode it cannot lower exactly (an unknown precision, a
shape the standard leaves ambiguous) raises ``CompileError`` naming the file, node, op, opset and
reason instead of producing a different answer.

Converters receive the frontend's inputs (``None`` for an optional input left empty or omitted) and
attributes, and return one expression, or a ``relax.Tuple`` when the node has several outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import CompileError

# TensorProto element types the standard allows for precision attributes, as TVM dtypes.
_FLOAT_TYPES = {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16"}
# Precisions tide computes a stage in when an attribute asks for it (stash_type, softmax_precision):
# what TVM's CPU and device code generators compute natively, so the result rounds as the standard
# says. Half precisions would be widened by TVM's legalization, a different rounding.
_COMPUTE_TYPES = ("float32", "float64")
_FLOATS = ("float16", "bfloat16", "float32", "float64")


@dataclass(frozen=True)
class Node:
    """The ONNX node a converter is lowering: where it is (file, name), what it is (op, opset), and
    how many outputs the graph asks for."""

    path: str
    name: str
    op: str
    opset: int
    outputs: int

    def refuse(self, reason: str) -> CompileError:
        """The error for a mode tide does not compile: names the node, its op and opset."""
        return CompileError(f"{self.path}: node '{self.name}' (op {self.op}, opset {self.opset}): {reason}")


def _shape(node: Node, x, what: str) -> tuple[int, ...]:
    """The static shape of ``x`` (every shape is static after specialization)."""
    try:
        return tuple(int(d) for d in x.ty.shape.values)
    except (AttributeError, TypeError) as err:
        raise node.refuse(f"input {what} needs a static shape, got {x.ty}") from err


def _dtype(x) -> str:
    return str(x.ty.dtype)


def _float_input(node: Node, x, what: str) -> str:
    dtype = _dtype(x)
    if dtype not in _FLOATS:
        raise node.refuse(f"input {what} is {dtype}, the standard allows only floating-point types here")
    return dtype


def _compute_type(node: Node, attrs: dict, name: str, default: int | None) -> str | None:
    """The dtype a precision attribute (``stash_type``, ``softmax_precision``) asks for."""
    value = attrs.get(name, default)
    if value is None:
        return None
    dtype = _FLOAT_TYPES.get(int(value))
    if dtype not in _COMPUTE_TYPES:
        raise node.refuse(f"{name}={value} ({dtype or 'not a floating-point type'}) is not compiled: "
                          f"tide computes this stage in float32 or float64 (stash/precision 1 or 11)")
    return dtype


def _stage_type(stash: str, dtype: str) -> str:
    """The precision of a normalization's first stage: ``stash_type``, or X's own type when that is
    wider (float64 X under the default float32 stash): onnxruntime and the reference
    implementation compute so, and the result is then never less precise than the standard's
    function body."""
    return "float64" if "float64" in (stash, dtype) else stash


def _axis(node: Node, axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise node.refuse(f"axis {axis} is outside [-{rank}, {rank}) for a rank-{rank} input")
    return axis % rank


def _unidirectional(node: Node, shape: tuple[int, ...], target: tuple[int, ...], what: str) -> None:
    """Checks that ``shape`` broadcasts to ``target`` without changing it (ONNX's unidirectional
    broadcasting: numpy's rules, right-aligned, the result being ``target``)."""
    ok = len(shape) <= len(target) and all(s in (1, t) for s, t in zip(reversed(shape), reversed(target)))
    if not ok:
        raise node.refuse(f"{what} of shape {list(shape)} does not broadcast unidirectionally to "
                          f"{list(target)}")


def _array(value, dtype: str) -> np.ndarray:
    """``value`` as a numpy array of the TVM dtype ``dtype`` (bfloat16 through ml_dtypes)."""
    if dtype == "bfloat16":
        import ml_dtypes

        return np.asarray(value, dtype=np.float64).astype(ml_dtypes.bfloat16)
    return np.asarray(value, dtype=np.float64).astype(dtype)


def _const(value, dtype: str):
    """A Relax constant of ``value`` (a scalar or array) rounded to ``dtype``."""
    from tvm import relax

    return relax.const(_array(value, dtype), dtype)


def _emit(bb, expr):
    return bb.normalize(expr)


def _outputs(node: Node, values: list):
    """The converter's result: the first ``node.outputs`` values (at least one)."""
    from tvm import relax

    used = values[:max(1, node.outputs)]
    return used[0] if len(used) == 1 else relax.Tuple(used)


# ---------------------------------------------------------------------------------------------
# Normalizations


def rms_normalization(bb, node: Node, inputs: list, attrs: dict):
    """``RMSNormalization`` (opset 23) over the axes ``[axis, rank)``, as the standard's function
    body computes it: X cast to ``stash_type`` (float32 or float64, see ``_stage_type``),
    ``rms = sqrt(mean(X^2) + eps)``, ``X / rms`` cast back to X's type, times ``scale``
    (unidirectionally broadcast to X)."""
    from tvm import relax

    x, scale = inputs[0], inputs[1]
    shape = _shape(node, x, "X")
    dtype = _float_input(node, x, "X")
    if _dtype(scale) != dtype:
        raise node.refuse(f"scale is {_dtype(scale)} and X is {dtype}: the standard's body multiplies "
                          "them in one type, so mixed types are not compiled")
    _unidirectional(node, _shape(node, scale, "scale"), shape, "scale")
    axis = _axis(node, int(attrs.get("axis", -1)), len(shape))
    stash = _stage_type(_compute_type(node, attrs, "stash_type", 1), dtype)
    eps = float(attrs.get("epsilon", 1e-5))
    xu = _emit(bb, relax.op.astype(x, stash)) if stash != dtype else x
    axes = list(range(axis, len(shape)))
    mean_sq = _emit(bb, relax.op.mean(relax.op.multiply(xu, xu), axis=axes, keepdims=True))
    rms = _emit(bb, relax.op.sqrt(relax.op.add(mean_sq, _const(eps, stash))))
    normalized = _emit(bb, relax.op.divide(xu, rms))
    if stash != dtype:
        normalized = _emit(bb, relax.op.astype(normalized, dtype))
    return relax.op.multiply(normalized, scale)


def layer_normalization(bb, node: Node, inputs: list, attrs: dict):
    """``LayerNormalization`` (opset 17) over the axes ``[axis, rank)``: X cast to ``stash_type``
    (float32 or float64, see ``_stage_type``), ``Mean = mean(X)``,
    ``StdDev = sqrt(mean((X - Mean)^2) + eps)``, ``Normalized = (X - Mean) / StdDev`` cast back to
    X's type, then ``Y = Normalized * Scale + B`` (Scale and B unidirectionally broadcast to X, as
    the standard's text says). The optional outputs
    ``Mean`` and ``InvStdDev = 1 / StdDev`` have the stash type and X's shape with ones from
    ``axis`` on. The variance is the mean of squared deviations (the two-pass form of the reference
    implementation), which rounds no worse than the function body's ``E[X^2] - E[X]^2``."""
    from tvm import relax

    x, scale, bias = inputs[0], inputs[1], inputs[2]
    shape = _shape(node, x, "X")
    dtype = _float_input(node, x, "X")
    for what, value in (("Scale", scale), ("B", bias)):
        if value is None:
            continue
        if _dtype(value) != dtype:
            raise node.refuse(f"{what} is {_dtype(value)} and X is {dtype}; the standard gives them one type")
        _unidirectional(node, _shape(node, value, what), shape, what)
    axis = _axis(node, int(attrs.get("axis", -1)), len(shape))
    declared = _compute_type(node, attrs, "stash_type", 1)
    stash = _stage_type(declared, dtype)
    eps = float(attrs.get("epsilon", 1e-5))
    xu = _emit(bb, relax.op.astype(x, stash)) if stash != dtype else x
    axes = list(range(axis, len(shape)))
    mean = _emit(bb, relax.op.mean(xu, axis=axes, keepdims=True))
    deviation = _emit(bb, relax.op.subtract(xu, mean))
    var = _emit(bb, relax.op.mean(relax.op.multiply(deviation, deviation), axis=axes, keepdims=True))
    std = _emit(bb, relax.op.sqrt(relax.op.add(var, _const(eps, stash))))
    normalized = _emit(bb, relax.op.divide(deviation, std))
    if stash != dtype:
        normalized = _emit(bb, relax.op.astype(normalized, dtype))
    y = _emit(bb, relax.op.multiply(normalized, scale))
    if bias is not None:
        y = _emit(bb, relax.op.add(y, bias))
    inv_std = _emit(bb, relax.op.divide(_const(1.0, stash), std))
    if declared != stash:  # Mean and InvStdDev have the stash type
        mean, inv_std = (_emit(bb, relax.op.astype(t, declared)) for t in (mean, inv_std))
    return _outputs(node, [y, mean, inv_std])


# ---------------------------------------------------------------------------------------------
# RotaryEmbedding


def rotary_embedding(bb, node: Node, inputs: list, attrs: dict):
    """``RotaryEmbedding`` (opset 23). X is ``[batch, heads, seq, head]`` (4-D) or
    ``[batch, seq, heads * head]`` (3-D, ``num_heads`` attribute). The first
    ``rotary_embedding_dim`` channels of each head (all when 0) rotate in pairs ``(x1, x2)``: the two
    halves of those channels, or even and odd channels when ``interleaved``; the rest pass through::

        real = cos * x1 - sin * x2        imag = sin * x1 + cos * x2

    cos and sin are ``cos_cache[position_ids]`` (caches ``[positions, rot / 2]``) or, without
    position_ids, the caches as given (``[batch, seq, rot / 2]``, numpy-broadcast); they broadcast
    over the heads. Position ids outside the cache are clamped to it (the standard leaves them
    undefined; clamping keeps every read inside the cache)."""
    from tvm import relax

    x, cos, sin, positions = inputs[0], inputs[1], inputs[2], inputs[3]
    shape = _shape(node, x, "X")
    dtype = _float_input(node, x, "X")
    for what, value in (("cos_cache", cos), ("sin_cache", sin)):
        if _dtype(value) != dtype:
            raise node.refuse(f"{what} is {_dtype(value)} and X is {dtype}; the standard gives them one type")
    if len(shape) == 4:
        batch, heads, seq, head = shape
        work = x
    elif len(shape) == 3:
        batch, seq, hidden = shape
        heads = int(attrs.get("num_heads", 0))
        if heads <= 0 or hidden % heads:
            raise node.refuse(f"a 3-D input needs num_heads dividing its hidden size {hidden}, got {heads}")
        head = hidden // heads
        work = _emit(bb, relax.op.reshape(x, (batch, seq, heads, head)))
    else:
        raise node.refuse(f"X must be 3-D or 4-D, got shape {list(shape)}")
    rot = int(attrs.get("rotary_embedding_dim", 0)) or head
    if rot % 2 or not 0 < rot <= head:
        raise node.refuse(f"rotary_embedding_dim {rot} must be even and at most the head size {head}")
    half = rot // 2
    if positions is not None:
        if _dtype(positions) != "int64" or _shape(node, positions, "position_ids") != (batch, seq):
            raise node.refuse(f"position_ids must be int64 [{batch}, {seq}], got {_dtype(positions)} "
                              f"{list(_shape(node, positions, 'position_ids'))}")
        for what, value in (("cos_cache", cos), ("sin_cache", sin)):
            cache = _shape(node, value, what)
            if len(cache) != 2 or cache[1] != half:
                raise node.refuse(f"with position_ids, {what} must be [positions, {half}], got {list(cache)}")
        cos = _emit(bb, relax.op.take(cos, positions, axis=0, mode="clip"))
        sin = _emit(bb, relax.op.take(sin, positions, axis=0, mode="clip"))
    tables = []
    for what, value in (("cos_cache", cos), ("sin_cache", sin)):
        table = _shape(node, value, what)
        if len(table) != 3 or table[-1] != half or table[0] not in (1, batch) or table[1] not in (1, seq):
            raise node.refuse(f"{what} must be [{batch}, {seq}, {half}] (or broadcast to it), got {list(table)}")
        # [b, s, half] -> broadcast over the heads axis of the working layout
        dims = (table[0], 1, table[1], half) if len(shape) == 4 else (table[0], table[1], 1, half)
        tables.append(_emit(bb, relax.op.reshape(value, dims)))
    cos, sin = tables
    last = 3
    interleaved = bool(int(attrs.get("interleaved", 0)))
    if interleaved:
        x1 = relax.op.strided_slice(work, axes=[last], begin=[0], end=[rot], strides=[2])
        x2 = relax.op.strided_slice(work, axes=[last], begin=[1], end=[rot], strides=[2])
    else:
        x1 = relax.op.strided_slice(work, axes=[last], begin=[0], end=[half])
        x2 = relax.op.strided_slice(work, axes=[last], begin=[half], end=[rot])
    x1, x2 = _emit(bb, x1), _emit(bb, x2)
    real = _emit(bb, relax.op.subtract(relax.op.multiply(cos, x1), relax.op.multiply(sin, x2)))
    imag = _emit(bb, relax.op.add(relax.op.multiply(sin, x1), relax.op.multiply(cos, x2)))
    work_shape = _shape(node, work, "X")
    if interleaved:
        pairs = _emit(bb, relax.op.stack([real, imag], axis=4))
        rotated = _emit(bb, relax.op.reshape(pairs, work_shape[:3] + (rot,)))
    else:
        rotated = _emit(bb, relax.op.concat([real, imag], axis=last))
    if rot < head:
        rest = relax.op.strided_slice(work, axes=[last], begin=[rot], end=[head])
        rotated = _emit(bb, relax.op.concat([rotated, rest], axis=last))
    return rotated if len(shape) == 4 else relax.op.reshape(rotated, shape)


# ---------------------------------------------------------------------------------------------
# Attention


def _heads_view(bb, node: Node, x, heads: int | None, what: str):
    """A 3-D ``[batch, seq, heads * head]`` input as ``[batch, heads, seq, head]``; 4-D as is."""
    from tvm import relax

    shape = _shape(node, x, what)
    if len(shape) == 4:
        return x, shape
    batch, seq, hidden = shape
    if not heads or hidden % heads:
        raise node.refuse(f"{what} [{batch}, {seq}, {hidden}] needs q_num_heads / kv_num_heads "
                          f"dividing its hidden size, got {heads}")
    split = relax.op.reshape(x, (batch, seq, heads, hidden // heads))
    view = _emit(bb, relax.op.permute_dims(split, [0, 2, 1, 3]))
    return view, (batch, heads, seq, hidden // heads)


def _static_frontier(q_len: int, total: int, offset: int, causal: bool, left: int, right: int) -> np.ndarray:
    """Which keys each query may attend under ``is_causal`` and the sliding window (opset 25),
    for one offset (the count of keys before the query block): bool ``[q_len, total]``."""
    diff = np.arange(q_len)[:, None] + offset - np.arange(total)[None, :]
    allowed = np.ones((q_len, total), dtype=bool)
    if causal:
        allowed &= diff >= 0
    if left >= 0:
        allowed &= diff <= left
    if right >= 0:
        allowed &= -diff <= right
    return allowed


def attention(bb, node: Node, inputs: list, attrs: dict):
    """``Attention`` (opsets 23, 24 and 25), as the standard and its reference implementation
    define it:

    - Q, K, V 4-D ``[batch, heads, seq, head]``, or 3-D ``[batch, seq, heads * head]`` with the
      ``q_num_heads`` / ``kv_num_heads`` attributes (viewed as 4-D, Y returned 3-D); grouped KV
      (``q_num_heads`` a multiple of ``kv_num_heads``) with KV head ``h // group`` serving query
      head h, computed without repeating K and V (the query heads of a group are one matmul row
      block).
    - ``past_key`` / ``past_value`` are prepended to K / V; the results are ``present_key`` /
      ``present_value``.
    - Scores ``(Q * sqrt(scale)) @ (K * sqrt(scale))^T`` (``scale`` defaults to 1/sqrt(head size),
      its square root rounded to Q's type), then ``softcap * tanh(scores / softcap)`` when
      ``softcap > 0``, plus the bias: a boolean ``attn_mask`` (False: -inf) or a numeric one
      (added), numpy-broadcast to ``[batch, heads, q_seq, total]`` and padded with -inf on the last
      axis when shorter; ``is_causal`` allows key j for query i iff ``j <= i + offset`` (offset:
      the past length, or ``nonpad_kv_seqlen - q_seq`` per batch, opset 24); ``nonpad_kv_seqlen``
      masks keys at or past each batch's length; opset 25's ``left_window_size`` /
      ``right_window_size`` bound ``i + offset - j`` from above and below.
    - Softmax over the keys (in ``softmax_precision`` when given); a query row whose bias is -inf
      everywhere gets zero probabilities (and a zero Y row) instead of NaN.
    - ``qk_matmul_output`` (4th output): the raw scores (mode 0), after softcap (1), with the bias
      (2) or the probabilities (3), in Q's type.

    float32 and float64 inputs are computed in their own type; float16 and bfloat16 inputs in
    float32 (the square root of the scale still rounded to the half type, as the standard says),
    each output rounded to the half type once: within two units in the last place of the
    reference, which rounds every intermediate to the half type.
    """
    from tvm import relax

    q, k, v = inputs[0], inputs[1], inputs[2]
    mask, past_k, past_v, nonpad = inputs[3], inputs[4], inputs[5], inputs[6]
    dtype = _float_input(node, q, "Q")
    for what, value in (("K", k), ("V", v), ("past_key", past_k), ("past_value", past_v)):
        if value is not None and _dtype(value) != dtype:
            raise node.refuse(f"{what} is {_dtype(value)} and Q is {dtype}: mixed-precision attention is "
                              "not compiled")
    if (past_k is None) != (past_v is None):
        raise node.refuse("past_key and past_value must be given together")
    io_dtype = dtype
    if dtype in ("float16", "bfloat16"):  # computed in float32, rounded once per output
        dtype = "float32"
        q, k, v, past_k, past_v = (None if t is None else _emit(bb, relax.op.astype(t, dtype))
                                   for t in (q, k, v, past_k, past_v))
    if nonpad is not None and past_k is not None:
        raise node.refuse("nonpad_kv_seqlen cannot be combined with past_key / past_value (the standard "
                          "forbids it)")
    rank = len(_shape(node, q, "Q"))
    if {rank, len(_shape(node, k, "K")), len(_shape(node, v, "V"))} not in ({3}, {4}):
        raise node.refuse("Q, K and V must all be 3-D or all 4-D")
    q_heads_attr, kv_heads_attr = attrs.get("q_num_heads"), attrs.get("kv_num_heads")
    if rank == 4 and (q_heads_attr is not None or kv_heads_attr is not None):
        if node.opset >= 25:
            raise node.refuse("q_num_heads / kv_num_heads must not be given for 4-D inputs (opset 25)")
        q4, k4 = _shape(node, q, "Q"), _shape(node, k, "K")
        if q_heads_attr not in (None, q4[1]) or kv_heads_attr not in (None, k4[1]):
            raise node.refuse(f"q_num_heads={q_heads_attr} / kv_num_heads={kv_heads_attr} contradict the "
                              f"4-D shapes of Q {list(q4)} and K {list(k4)}")
    q4, (batch, q_heads, q_len, head) = _heads_view(bb, node, q, q_heads_attr, "Q")
    k4, (k_batch, kv_heads, kv_len, k_head) = _heads_view(bb, node, k, kv_heads_attr, "K")
    v4, (v_batch, v_heads, v_len, v_head) = _heads_view(bb, node, v, kv_heads_attr, "V")
    if k_batch != batch or v_batch != batch or k_head != head or v_heads != kv_heads or v_len != kv_len:
        raise node.refuse(f"inconsistent shapes: Q {[batch, q_heads, q_len, head]}, K "
                          f"{[k_batch, kv_heads, kv_len, k_head]}, V {[v_batch, v_heads, v_len, v_head]}")
    if q_heads % kv_heads:
        raise node.refuse(f"{q_heads} query heads cannot share {kv_heads} KV heads (not a multiple)")
    group = q_heads // kv_heads

    past_len = 0
    if past_k is not None:
        pk, pv = _shape(node, past_k, "past_key"), _shape(node, past_v, "past_value")
        if pk[:2] != (batch, kv_heads) or pk[3] != head or pv[:3] != pk[:3] or pv[3] != v_head:
            raise node.refuse(f"past_key {list(pk)} / past_value {list(pv)} do not match K and V")
        past_len = pk[2]
        k4 = _emit(bb, relax.op.concat([past_k, k4], axis=2))
        v4 = _emit(bb, relax.op.concat([past_v, v4], axis=2))
    present_k, present_v = k4, v4
    total = past_len + kv_len

    if "scale" in attrs:
        scale = float(attrs["scale"])
    else:
        scale = 1.0 / math.sqrt(head)
    root = _const(_array(np.sqrt(np.float64(scale)), io_dtype).astype(np.float64), dtype)
    qs = _emit(bb, relax.op.multiply(q4, root))
    ks = _emit(bb, relax.op.multiply(k4, root))
    # [b, kv, group * q_len, head] @ [b, kv, head, total]: query head h = kv * group + g
    q_rows = _emit(bb, relax.op.reshape(qs, (batch, kv_heads, group * q_len, head)))
    scores = _emit(bb, relax.op.matmul(q_rows, relax.op.permute_dims(ks, [0, 1, 3, 2])))
    scores = _emit(bb, relax.op.reshape(scores, (batch, q_heads, q_len, total)))
    raw = scores
    softcap = float(attrs.get("softcap", 0.0))
    if softcap > 0:
        cap = _const(softcap, dtype)
        scores = _emit(bb, relax.op.multiply(relax.op.tanh(relax.op.divide(scores, cap)), cap))
    capped = scores

    bias = _attention_bias(bb, node, attrs, mask, nonpad, dtype, (batch, q_heads, q_len, total), past_len)
    if bias is not None:
        scores = _emit(bb, relax.op.add(scores, bias[0]))
    biased = scores

    mode = int(attrs.get("qk_matmul_output_mode", 0))
    if mode not in (0, 1, 2, 3):
        raise node.refuse(f"qk_matmul_output_mode {mode} is not one the standard defines (0 to 3)")
    precision = _compute_type(node, attrs, "softmax_precision", None)
    if precision is not None and precision != dtype:
        scores = _emit(bb, relax.op.astype(scores, precision))
    probs = _emit(bb, relax.op.nn.softmax(scores, axis=-1))
    if bias is not None and bias[1] is not None:
        probs = _emit(bb, relax.op.where(bias[1], _const(0.0, _dtype(probs)), probs))
    if _dtype(probs) != dtype:
        probs = _emit(bb, relax.op.astype(probs, dtype))

    p_rows = _emit(bb, relax.op.reshape(probs, (batch, kv_heads, group * q_len, total)))
    y = _emit(bb, relax.op.matmul(p_rows, v4))
    y = _emit(bb, relax.op.reshape(y, (batch, q_heads, q_len, v_head)))
    if rank == 3:
        y = _emit(bb, relax.op.reshape(relax.op.permute_dims(y, [0, 2, 1, 3]), (batch, q_len, q_heads * v_head)))
    qk = (raw, capped, biased, probs)[mode]
    outs = [y, present_k, present_v, qk]
    if io_dtype != dtype:
        outs = [_emit(bb, relax.op.astype(t, io_dtype)) for t in outs[:max(1, node.outputs)]]
    return _outputs(node, outs)


def _attention_bias(bb, node: Node, attrs: dict, mask, nonpad, dtype: str, full: tuple[int, ...],
                    past_len: int):
    """The additive bias of ``attention`` (None when nothing masks) as ``(bias, fully_masked)``:
    ``bias`` broadcasts to the scores ``full = [batch, heads, q_len, total]``; ``fully_masked`` is
    a bool tensor ``[..., q_len, 1]`` of the query rows whose bias is -inf everywhere (None when
    no row is), which the softmax result must zero."""
    from tvm import relax

    batch, heads, q_len, total = full
    causal = bool(int(attrs.get("is_causal", 0)))
    left, right = int(attrs.get("left_window_size", -1)), int(attrs.get("right_window_size", -1))
    if left < -1 or right < -1:
        raise node.refuse(f"left_window_size {left} / right_window_size {right} must be -1 or nonnegative")
    neg_inf = _const(-np.inf, dtype)
    zero = _const(0.0, dtype)
    terms = []      # Relax bias terms, broadcasting to `full`
    static = None   # the part of the bias known now: float64 [q_len, total]

    if mask is not None:
        mshape = _shape(node, mask, "attn_mask")
        if len(mshape) > 4 or not mshape:
            raise node.refuse(f"attn_mask must have rank 1 to 4, got {list(mshape)}")
        last = mshape[-1]
        if last > total or (last < total and last == 1 and node.opset < 24):
            raise node.refuse(
                f"attn_mask's last axis is {last} for {total} keys: opset {node.opset} defines "
                + ("no longer masks" if last > total else "a length-1 key axis both as broadcast (its "
                   "text) and as padded with -inf (its reference implementation)"))
        padded = mshape[:-1] + (total,)
        if not all(m in (1, f) for m, f in zip(reversed(padded[:-1]), reversed(full[:-1]))):
            raise node.refuse(f"attn_mask {list(mshape)} does not broadcast to {list(full)}")
        if _dtype(mask) == "bool":
            additive = _emit(bb, relax.op.where(mask, zero, neg_inf))
        else:
            additive = _emit(bb, relax.op.astype(mask, dtype)) if _dtype(mask) != dtype else mask
        if last < total:
            pad = _const(np.full(mshape[:-1] + (total - last,), -np.inf), dtype)
            additive = _emit(bb, relax.op.concat([additive, pad], axis=-1))
        terms.append(additive)

    windowed = left >= 0 or right >= 0
    if nonpad is not None:
        if _dtype(nonpad) != "int64" or _shape(node, nonpad, "nonpad_kv_seqlen") != (batch,):
            raise node.refuse(f"nonpad_kv_seqlen must be int64 [{batch}]")
        lengths = _emit(bb, relax.op.reshape(nonpad, (batch, 1, 1, 1)))
        keys = relax.const(np.arange(total, dtype=np.int64).reshape(1, 1, 1, total), "int64")
        terms.append(_emit(bb, relax.op.where(relax.op.less(keys, lengths), zero, neg_inf)))
        if causal or windowed:
            # per batch: offset = nonpad - q_len; diff = i + offset - j
            rows = relax.const((np.arange(q_len, dtype=np.int64)[:, None] - q_len
                                - np.arange(total, dtype=np.int64)[None, :]).reshape(1, 1, q_len, total), "int64")
            diff = _emit(bb, relax.op.add(rows, lengths))
            allowed = None
            for bound in ([relax.op.greater_equal(diff, relax.const(0, "int64"))] if causal else []) + \
                    ([relax.op.less_equal(diff, relax.const(left, "int64"))] if left >= 0 else []) + \
                    ([relax.op.greater_equal(diff, relax.const(-right, "int64"))] if right >= 0 else []):
                allowed = bound if allowed is None else relax.op.logical_and(allowed, bound)
            terms.append(_emit(bb, relax.op.where(allowed, zero, neg_inf)))
    elif causal or windowed:
        allowed = _static_frontier(q_len, total, past_len, causal, left, right)
        static = np.where(allowed, 0.0, -np.inf)
        terms.append(_const(static, dtype))

    if not terms:
        return None
    bias = terms[0]
    for term in terms[1:]:
        bias = _emit(bb, relax.op.add(bias, term))
    if len(terms) == 1 and static is not None:
        rows_masked = np.isneginf(static.max(axis=-1, keepdims=True))
        return bias, (relax.const(rows_masked) if rows_masked.any() else None)
    # counted, not compared with a row maximum: TVM's max reduction starts from the lowest finite
    # value, so the maximum of a row of -inf is not -inf
    open_keys = relax.op.sum(relax.op.astype(relax.op.not_equal(bias, neg_inf), "int32"), axis=-1, keepdims=True)
    return bias, _emit(bb, relax.op.equal(open_keys, relax.const(0, "int32")))


# ---------------------------------------------------------------------------------------------
# Registration

CONVERTERS: dict[str, Callable] = {
    "Attention": attention,
    "RotaryEmbedding": rotary_embedding,
    "RMSNormalization": rms_normalization,
    "LayerNormalization": layer_normalization,
}


def converter_classes(path: str) -> dict[str, type]:
    """Frontend converter classes for ``CONVERTERS`` (what ``relax_import``'s convert map holds):
    each calls its converter with the node's name, op, the model's opset and output count, and
    the attributes without the frontend's ``tvm_custom`` entry."""

    def make(op: str, fn: Callable) -> type:
        def get_converter(_cls, opset):
            def convert(bb, inputs, attrs, _params):
                custom = attrs.get("tvm_custom", {})
                node = Node(path, custom.get("name") or "(unnamed)", op, int(opset),
                            int(custom.get("num_outputs", 1)))
                args = [inputs[i] if i < len(inputs) else None for i in range(8)]
                return fn(bb, node, args, {k: v for k, v in attrs.items() if k != "tvm_custom"})

            return convert

        return type(f"Tide{op}", (), {"get_converter": classmethod(get_converter)})

    return {op: make(op, fn) for op, fn in CONVERTERS.items()}
