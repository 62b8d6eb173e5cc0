"""`export()`: a DeepSeek-V4 checkpoint directory or built-in config -> one ONNX file."""

from __future__ import annotations

import os
import shutil
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
from .weights import BF16, CheckpointWeights, ParamSpec, RandomWeights, SafetensorsWriter, param_specs

EXPORT_FORMAT_VERSION = "1"
# Above this many bytes of initializers the weights go to `<output>.data` (ONNX external data);
# protobuf cannot hold more than 2 GiB in one message.
EXTERNAL_DATA_THRESHOLD = int(1.5 * 2**30)
_EXTERNAL_ALIGN = 4096
OPSETS = tuple(range(17, 24))
DTYPES = {"float32": np.dtype(np.float32), "bfloat16": BF16}
_ONNX_TYPES = {np.dtype(np.float32): TensorProto.FLOAT, BF16: TensorProto.BFLOAT16,
               np.dtype(np.int64): TensorProto.INT64}


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


def export(source: str | os.PathLike, output_path: str | os.PathLike, *, seed: int = 0,
           max_seq_len: int | None = None, batch: int = 1, opset: int = 18, dtype: str = "float32",
           save_checkpoint: str | os.PathLike | None = None,
           config_overrides: dict | None = None) -> ExportResult:
    """Exports `source` (a Hugging Face DeepSeek-V4 checkpoint directory, or a built-in config
    name: tiny, flash-2layer, pro-2layer) to the ONNX graph described in docs/onnx-contract.md.

    seed draws the weights of a built-in config; max_seq_len is the decode-state capacity
    (default min(max_position_embeddings, 4096)); batch is the static batch size; opset 17..23;
    dtype float32 or bfloat16 (bf16 initializers, float32 compute). save_checkpoint writes the
    exported weights as a checkpoint directory that transformers loads. config_overrides replaces
    fields of a built-in config (tests use it to shrink vocab and experts). Bad input raises
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

    cfg, spec, params, weights, source_dir = _resolve_source(source, seed, config_overrides)
    if max_seq_len is None:
        max_seq_len = default_max_seq_len(spec)
    if not isinstance(max_seq_len, int) or max_seq_len < 1:
        raise ExportError(f"max_seq_len: expected a positive integer, got {max_seq_len!r}")
    if save_checkpoint is not None and source_dir is not None and \
            os.path.realpath(save_checkpoint) == os.path.realpath(source_dir):
        raise ExportError(f"{save_checkpoint}: save_checkpoint must differ from the source checkpoint directory")

    storage = DTYPES[dtype]
    parts = build_graph(spec, params, batch=batch, max_seq_len=max_seq_len, opset=opset, bf16=dtype == "bfloat16")
    sizes = {p.name: int(np.prod(p.shape, dtype=np.int64)) for p in params}
    weight_bytes = sum(sizes[p.name] * (8 if p.integer else storage.itemsize) for p in params)
    external = weight_bytes > EXTERNAL_DATA_THRESHOLD

    out_dir = os.path.dirname(os.path.abspath(output_path))
    base = os.path.basename(output_path)
    os.makedirs(out_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".{base}.", dir=out_dir)
    checkpoint = None
    data_path = output_path + ".data" if external else None
    try:
        if save_checkpoint is not None:
            checkpoint = _CheckpointSink(os.fspath(save_checkpoint), cfg, params, storage, dtype)
        initializers = _write_weights(params, weights, storage, checkpoint,
                                      os.path.join(work, base + ".data") if external else None, base + ".data")
        model = _make_model(parts, initializers, spec, opset, dtype, batch, max_seq_len)
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
        opset=opset, dtype=dtype)


def _resolve_source(source, seed: int, overrides: dict | None):
    src = os.fspath(source)
    if os.path.isdir(src):
        if overrides:
            raise ExportError(f"{src}: config_overrides apply to built-in configs only")
        config_path = os.path.join(src, "config.json")
        if not os.path.isfile(config_path):
            raise ExportError(f"{config_path}: missing (a checkpoint directory holds config.json and *.safetensors)")
        cfg = load_config_json(config_path)
        spec = spec_from_config(cfg, config_path)
        params = param_specs(spec)
        return cfg, spec, params, CheckpointWeights(src, params, spec), src
    if src in BUILTIN_CONFIGS:
        if not isinstance(seed, int):
            raise ExportError(f"seed: expected an integer, got {seed!r}")
        where = f"built-in config '{src}'"
        cfg = builtin_config(src, overrides)
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

    def __init__(self, directory: str, cfg, params: list[ParamSpec], storage: np.dtype, dtype: str):
        if os.path.exists(directory) and not os.path.isdir(directory):
            raise ExportError(f"{directory}: save_checkpoint path exists and is not a directory")
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self._tmp_weights = os.path.join(directory, ".model.safetensors.tmp")
        self._tmp_config = os.path.join(directory, ".config.json.tmp")
        cfg.dtype = dtype
        cfg.architectures = ["DeepseekV4ForCausalLM"]
        self._config_json = cfg.to_json_string()
        layout = [(p.name, p.shape, np.dtype(np.int64) if p.integer else storage) for p in params]
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


def _write_weights(params, weights, storage: np.dtype, checkpoint: _CheckpointSink | None,
                   data_file: str | None, location: str) -> list[TensorProto]:
    """Initializers for every parameter, streamed one tensor at a time: inline raw data, or
    appended to `data_file` (4 KiB aligned) and referenced as ONNX external data."""
    out = []
    sink = open(data_file, "wb") if data_file else None
    try:
        for p in params:
            arr = weights.get(p.name)
            if not p.integer:
                arr = arr.astype(storage, copy=False)
            arr = np.ascontiguousarray(arr)
            if checkpoint is not None:
                checkpoint.write(p.name, arr)
            tensor = TensorProto(name=p.name, data_type=_ONNX_TYPES[arr.dtype], dims=list(arr.shape))
            if sink is None:
                tensor.raw_data = arr.tobytes()
            else:
                offset = sink.tell()
                pad = -offset % _EXTERNAL_ALIGN
                sink.write(b"\0" * pad)
                offset += pad
                arr.tofile(sink)
                tensor.data_location = TensorProto.EXTERNAL
                for key, value in (("location", location), ("offset", str(offset)), ("length", str(arr.nbytes))):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = key, value
            out.append(tensor)
    finally:
        if sink is not None:
            sink.close()
    return out


def _make_model(parts, initializers, spec: ModelSpec, opset: int, dtype: str, batch: int,
                max_seq_len: int) -> onnx.ModelProto:
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
        "tide.dtype": dtype,
        "tide.sliding_window": spec.window,
        "tide.layer_kinds": ",".join(spec.layer_kinds),
        "tide.layer_ratios": ",".join(str(r) for r in spec.layer_ratios),
        "tide.hc_sinkhorn_iters": spec.hc_iters,
        "tide.index_topk": spec.index_topk,
    }
    helper.set_model_props(model, {k: str(v) for k, v in meta.items()})
    return model
