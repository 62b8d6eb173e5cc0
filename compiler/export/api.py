"""`export()`: a DeepSeek-V4 checkpoint directory or built-in config -> one ONNX file."""

from __future__ import annotations

import os
import shutil
from collections import Counter
import tempfile
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from .builder import TIDE_DOMAIN, TIDE_VERSION
from .config import (BUILTIN_CONFIGS, ModelSpec, builtin_config, default_max_seq_len, load_config_json,
                     spec_from_config)
from .errors import ExportError
from ..artifact.format import StateSpec
from .graph import build_graph
from .quant import FP4_BLOCK, Quantized, dequantize, fp8_scale_shape
from .weights import BF16, CheckpointWeights, ParamSpec, RandomWeights, SafetensorsWriter, param_specs

EXPORT_FORMAT_VERSION = "1"
# Above this many bytes of initializers the weights go to `<output>.data` (ONNX external data);
# protobuf cannot hold more than 2 GiB in one message.
EXTERNAL_DATA_THRESHOLD = int(1.5 * 2**30)
_EXTERNAL_ALIGN = 4096
OPSETS = tuple(range(17, 24))
# "auto": every weight as the checkpoint stores it (float32, bf16, fp8, fp4); "float32" and
# "bfloat16": every floating weight converted to that type (quantized ones dequantized exactly).
DTYPES = {"auto": None, "float32": np.dtype(np.float32), "bfloat16": BF16}
_ONNX_TYPES = {np.dtype(np.float32): TensorProto.FLOAT, BF16: TensorProto.BFLOAT16,
               np.dtype(np.int64): TensorProto.INT64, np.dtype(np.uint8): TensorProto.UINT8}
_ITEMSIZE = {"float32": 4, "bfloat16": 2, "int64": 8}


@dataclass(frozen=True)
class ExportResult:
    path: str                        # the ONNX file
    data_path: str | None            # its external data file, when the weights are external
    checkpoint: str | None           # the Hugging Face checkpoint written with save_checkpoint
    spec: ModelSpec
    states: tuple[StateSpec, ...]    # decode state, in graph input order
    functions: tuple[str, ...]       # the `tide` functions the graph uses
    num_parameters: int
    weight_bytes: int
    batch: int
    max_seq_len: int
    opset: int
    dtype: str
    weights: str                     # parameter count per stored form, e.g. "bfloat16:12,fp4:6,fp8:30"


def export(source: str | os.PathLike, output_path: str | os.PathLike, *, seed: int = 0,
           max_seq_len: int | None = None, batch: int = 1, opset: int = 18, dtype: str = "auto",
           save_checkpoint: str | os.PathLike | None = None,
           config_overrides: dict | None = None, layers: int | None = None) -> ExportResult:
    """Exports `source` (a Hugging Face DeepSeek-V4 checkpoint directory, or a built-in config
    name: tiny, flash-2layer, pro-2layer, flash, pro) to the ONNX graph described in docs/onnx-contract.md.

    seed draws the weights of a built-in config; max_seq_len is the decode-state capacity
    (default min(max_position_embeddings, 4096)); batch is the static batch size; opset 17..23;
    dtype "auto" keeps every weight as the checkpoint stores it (float32, bf16, or FP8 / FP4 bytes with
    their scales, dequantized by tide functions in the graph), "float32" / "bfloat16" converts every
    floating weight (quantized ones dequantized exactly); compute is float32 either way.
    save_checkpoint writes the exported weights, dequantized, as a checkpoint directory that
    transformers loads. config_overrides replaces
    fields of a built-in config (tests use it to shrink vocab and experts); layers keeps the first N
    layers of a built-in config's layer schedule (flash and pro: the released 43- and 61-layer ones). Bad input raises
    ExportError, and no file is left at output_path.
    """
    output_path = os.fspath(output_path)
    if dtype not in DTYPES:
        raise ExportError(f"dtype: expected one of {sorted(DTYPES)}, got {dtype!r}")
    if opset not in OPSETS:
        raise ExportError(f"opset: expected {OPSETS[0]}..{OPSETS[-1]}, got {opset!r}")
    if not isinstance(batch, int) or batch < 1:
        raise ExportError(f"batch: expected a positive integer, got {batch!r}")
    if os.path.isdir(output_path):
        raise ExportError(f"{output_path}: output path is a directory, expected an ONNX file name")

    cfg, spec, params, weights, source_dir = _resolve_source(source, seed, config_overrides, layers)
    if max_seq_len is None:
        max_seq_len = default_max_seq_len(spec)
    if not isinstance(max_seq_len, int) or max_seq_len < 1:
        raise ExportError(f"max_seq_len: expected a positive integer, got {max_seq_len!r}")
    if save_checkpoint is not None and source_dir is not None and \
            os.path.realpath(save_checkpoint) == os.path.realpath(source_dir):
        raise ExportError(f"{save_checkpoint}: save_checkpoint must differ from the source checkpoint directory")

    forms = _forms(params, weights.forms, dtype)
    parts = build_graph(spec, params, batch=batch, max_seq_len=max_seq_len, opset=opset, forms=forms)
    sizes = {p.name: int(np.prod(p.shape, dtype=np.int64)) for p in params}
    weight_bytes = sum(_stored_bytes(p.shape, forms[p.name]) for p in params)
    external = weight_bytes > EXTERNAL_DATA_THRESHOLD

    out_dir = os.path.dirname(os.path.abspath(output_path))
    base = os.path.basename(output_path)
    os.makedirs(out_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".{base}.", dir=out_dir)
    checkpoint = None
    data_path = output_path + ".data" if external else None
    try:
        if save_checkpoint is not None:
            checkpoint = _CheckpointSink(os.fspath(save_checkpoint), cfg, params, forms, dtype)
        initializers = _write_weights(params, weights, forms, checkpoint,
                                      os.path.join(work, base + ".data") if external else None, base + ".data")
        model = _make_model(parts, initializers, spec, opset, dtype, batch, max_seq_len, forms)
        tmp_model = os.path.join(work, base)
        onnx.save_model(model, tmp_model)
        onnx.checker.check_model(tmp_model)
        if external:
            os.replace(os.path.join(work, base + ".data"), data_path)
        os.replace(tmp_model, output_path)
        if checkpoint is not None:
            checkpoint.commit()
    except BaseException:
        if checkpoint is not None:
            checkpoint.abort()
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)

    return ExportResult(
        path=output_path, data_path=data_path, checkpoint=os.fspath(save_checkpoint) if save_checkpoint else None,
        spec=spec, states=tuple(parts.states), functions=tuple(f.name for f in parts.functions),
        num_parameters=sum(sizes.values()), weight_bytes=weight_bytes, batch=batch, max_seq_len=max_seq_len,
        opset=opset, dtype=dtype, weights=_form_summary(forms))


def _resolve_source(source, seed: int, overrides: dict | None, layers: int | None = None):
    src = os.fspath(source)
    if os.path.isdir(src):
        if overrides:
            raise ExportError(f"{src}: config_overrides apply to built-in configs only")
        if layers is not None:
            raise ExportError(f"{src}: --layers applies to built-in configs only (a checkpoint has its own depth)")
        config_path = os.path.join(src, "config.json")
        if not os.path.isfile(config_path):
            raise ExportError(f"{config_path}: missing (a checkpoint directory holds config.json and *.safetensors)")
        cfg, quant = load_config_json(config_path)
        spec = spec_from_config(cfg, config_path)
        params = param_specs(spec)
        return cfg, spec, params, CheckpointWeights(src, params, spec, quant), src
    if src in BUILTIN_CONFIGS:
        if not isinstance(seed, int):
            raise ExportError(f"seed: expected an integer, got {seed!r}")
        where = f"built-in config '{src}'"
        cfg = builtin_config(src, overrides, layers)
        spec = spec_from_config(cfg, where)
        params = param_specs(spec)
        return cfg, spec, params, RandomWeights(params, seed, spec.experts), None
    what = "a file, not a directory" if os.path.exists(src) else "no such directory"
    raise ExportError(f"SOURCE '{src}': expected a Hugging Face DeepSeek-V4 checkpoint directory "
                      f"(config.json + *.safetensors) or a built-in config ({', '.join(BUILTIN_CONFIGS)}); "
                      f"got {what}")


class _CheckpointSink:
    """Writes config.json + model.safetensors into a directory, atomically (temporary names,
    renamed on commit)."""

    def __init__(self, directory: str, cfg, params: list[ParamSpec], forms: dict[str, str], dtype: str):
        if os.path.exists(directory) and not os.path.isdir(directory):
            raise ExportError(f"{directory}: save_checkpoint path exists and is not a directory")
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self._tmp_weights = os.path.join(directory, ".model.safetensors.tmp")
        self._tmp_config = os.path.join(directory, ".config.json.tmp")
        cfg.dtype = "bfloat16" if dtype == "bfloat16" else "float32"
        cfg.architectures = ["DeepseekV4ForCausalLM"]
        self._config_json = cfg.to_json_string()
        layout = [(p.name, p.shape, _checkpoint_dtype(forms[p.name])) for p in params]
        self._writer = SafetensorsWriter(self._tmp_weights, layout)

    def write(self, name: str, array: np.ndarray) -> None:
        self._writer.write(name, array)

    def commit(self) -> None:
        self._writer.close()
        with open(self._tmp_config, "w", encoding="utf-8") as f:
            f.write(self._config_json)
        os.replace(self._tmp_weights, os.path.join(self.directory, "model.safetensors"))
        os.replace(self._tmp_config, os.path.join(self.directory, "config.json"))

    def abort(self) -> None:
        self._writer.close()
        for path in (self._tmp_weights, self._tmp_config):
            if os.path.exists(path):
                os.remove(path)


def _forms(params, stored: dict[str, str], dtype: str) -> dict[str, str]:
    """How each parameter goes into the ONNX file: its stored form ("auto"), or every floating one
    converted to ``dtype``."""
    if dtype == "auto":
        return dict(stored)
    return {p.name: "int64" if p.integer else dtype for p in params}


def _form_summary(forms: dict[str, str]) -> str:
    return ",".join(f"{form}:{n}" for form, n in sorted(Counter(forms.values()).items()))


def _stored_bytes(shape, form: str) -> int:
    """Bytes of a [..., N, K] parameter in ``form``, scales included."""
    count = int(np.prod(shape, dtype=np.int64))
    if form == "fp8":
        return count + int(np.prod(fp8_scale_shape(tuple(shape), (128, 128)), dtype=np.int64))
    if form == "fp4":
        return count // 2 + count // FP4_BLOCK
    return count * _ITEMSIZE[form]


def _checkpoint_dtype(form: str) -> np.dtype:
    """save_checkpoint's dtype for a parameter in ``form`` (quantized ones are written dequantized)."""
    return {"int64": np.dtype(np.int64), "bfloat16": BF16}.get(form, np.dtype(np.float32))


def _write_weights(params, weights, forms: dict[str, str], checkpoint: _CheckpointSink | None,
                   data_file: str | None, location: str) -> list[TensorProto]:
    """Initializers for every parameter, streamed one tensor at a time: inline raw data, or
    appended to `data_file` (4 KiB aligned) and referenced as ONNX external data. A quantized
    parameter is two uint8 initializers, ``<name>`` (the data bytes) and ``<name>.scale``."""
    out = []
    sink = open(data_file, "wb") if data_file else None
    try:
        for p in params:
            form = forms[p.name]
            value = weights.get_stored(p.name)
            if form in ("fp8", "fp4"):
                if checkpoint is not None:
                    checkpoint.write(p.name, dequantize(value))
                out.append(_initializer(p.name, value.data, sink, location))
                out.append(_initializer(p.name + ".scale", value.scale, sink, location))
                continue
            if form in ("float32", "bfloat16"):
                value = (dequantize(value) if isinstance(value, Quantized) else value).astype(
                    np.float32 if form == "float32" else BF16, copy=False)
            arr = np.ascontiguousarray(value)
            if checkpoint is not None:
                checkpoint.write(p.name, arr if form != "bfloat16" or arr.dtype == BF16 else arr.astype(BF16))
            out.append(_initializer(p.name, arr, sink, location))
    finally:
        if sink is not None:
            sink.close()
    return out


def _initializer(name: str, arr: np.ndarray, sink, location: str) -> TensorProto:
    """One initializer: inline, or appended to ``sink`` (4 KiB aligned) as external data."""
    arr = np.ascontiguousarray(arr)
    tensor = TensorProto(name=name, data_type=_ONNX_TYPES[arr.dtype], dims=list(arr.shape))
    if sink is None:
        tensor.raw_data = arr.tobytes()
        return tensor
    offset = sink.tell()
    pad = -offset % _EXTERNAL_ALIGN
    sink.write(b"\0" * pad)
    offset += pad
    arr.tofile(sink)
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(arr.nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _make_model(parts, initializers, spec: ModelSpec, opset: int, dtype: str, batch: int,
                max_seq_len: int, forms: dict[str, str]) -> onnx.ModelProto:
    graph = helper.make_graph(parts.nodes, "deepseek_v4", parts.inputs, parts.outputs, initializer=initializers)
    imports = [helper.make_opsetid("", opset), helper.make_opsetid(TIDE_DOMAIN, TIDE_VERSION)]
    model = helper.make_model(graph, opset_imports=imports, functions=parts.functions, producer_name="tide.export",
                              producer_version=EXPORT_FORMAT_VERSION)
    model.ir_version = helper.find_min_ir_version_for(imports, ignore_unknown=True)
    meta = {
        "tide.contract": EXPORT_FORMAT_VERSION,
        "tide.model": f"deepseek_v4-{spec.n_layers}L-d{spec.hidden}-h{spec.heads}x{spec.head_dim}-v{spec.vocab}",
        "tide.batch": batch,
        "tide.max_seq_len": max_seq_len,
        "tide.dtype": "bfloat16" if dtype == "bfloat16" else "float32",
        "tide.weights": _form_summary(forms),
        "tide.sliding_window": spec.window,
        "tide.layer_kinds": ",".join(spec.layer_kinds),
        "tide.layer_ratios": ",".join(str(r) for r in spec.layer_ratios),
        "tide.hc_sinkhorn_iters": spec.hc_iters,
        "tide.index_topk": spec.index_topk,
    }
    helper.set_model_props(model, {k: str(v) for k, v in meta.items()})
    return model
