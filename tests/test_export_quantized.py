"""tide export of quantized DeepSeek-V4 checkpoints (FP8 linears, FP4 or FP8 routed experts, bf16
elsewhere) in DeepSeek's release layout and in the layout transformers' save_pretrained writes.

The checkpoints come from an independent writer (tests/quant_checkpoint.py: numpy rounding to
e4m3 / e2m1 with power-of-two block scales); the reference is transformers' own dequantizer
(``FineGrainedFP8Config(dequantize=True)``) on the same files, run in float32. The exported graph
carries the weights as bytes and dequantizes them exactly with tide.DequantizeFP8 / DequantizeFP4
(standard ops), so onnxruntime on it matches the reference to float32 reduction-order noise:
the same TOL as the float export (tests/test_export.py). A planted nibble-order or scale-exponent
bug changes every routed-expert weight and moves the logits by far more (checked below).
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
import torch
from transformers import AutoModelForCausalLM, FineGrainedFP8Config

from quant_checkpoint import tiny_quant_config, write_quantized_checkpoint, write_safetensors
from test_export import OrtModel, assert_close, tokens
from tide.compiler.export import ExportError, export
from tide.compiler.export.weights import read_safetensors_header

TOL = 1e-4
VARIANTS = {  # name: (layout, experts)
    "release-fp4": ("deepseek", "fp4"),
    "hf-fp4": ("hf", "fp4"),
    "release-fp8": ("deepseek", "fp8"),
    "hf-bf16": ("hf", "bf16"),
}


def reference_model(directory):
    model = AutoModelForCausalLM.from_pretrained(str(directory), quantization_config=FineGrainedFP8Config(
        dequantize=True))
    return model.float().eval()


@torch.no_grad()
def reference_logits(model, ids):
    return model(torch.as_tensor(ids)).logits.numpy()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("quant")
    out = {}
    for name, (layout, experts) in VARIANTS.items():
        directory = root / name
        write_quantized_checkpoint(str(directory), tiny_quant_config(experts=experts), seed=3, layout=layout,
                                   experts=experts)
        out[name] = directory
    return out


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_quantized_export_matches_transformers(tmp_path, checkpoints, variant):
    src = checkpoints[variant]
    result = export(src, tmp_path / "m.onnx", max_seq_len=64)
    experts = VARIANTS[variant][1]
    forms = dict(item.split(":") for item in result.weights.split(","))
    assert int(forms["fp8"]) >= 30 and int(forms["bfloat16"]) >= 30
    assert ("fp4" in forms) == (experts == "fp4")
    # the quantized bytes travel as stored: the ONNX file is about the checkpoint's size
    ckpt_bytes = sum(os.path.getsize(src / f) for f in os.listdir(src) if f.endswith(".safetensors"))
    mtp_bytes = sum(e.nbytes for f in os.listdir(src) if f.endswith(".safetensors")
                    for k, e in read_safetensors_header(str(src / f)).items() if k.startswith("mtp."))
    assert abs(os.path.getsize(result.path) - (ckpt_bytes - mtp_bytes)) < 0.05 * ckpt_bytes
    model = onnx.load(result.path)
    called = {n.op_type for n in model.graph.node if n.domain == "tide"}
    assert ("DequantizeFP4" in called) == (experts == "fp4") and "DequantizeFP8" in called
    dtypes = {i.name: i.data_type for i in model.graph.initializer}
    wq_a = "model.layers.1.self_attn.q_a_proj.weight"
    assert dtypes[wq_a] == onnx.TensorProto.UINT8 and dtypes[wq_a + ".scale"] == onnx.TensorProto.UINT8
    assert dtypes["model.embed_tokens.weight"] == onnx.TensorProto.BFLOAT16

    ids = tokens(5, 40)
    ref = reference_logits(reference_model(src), ids)
    ort_model = OrtModel(result.path)
    logits, _ = ort_model.prefill_chunks(ids, [24, 16])   # two chunks: the states carry over
    assert_close(logits, ref, TOL)


def test_layouts_give_identical_graph_weights(tmp_path, checkpoints):
    """The release layout and save_pretrained's layout of the same draws export the same initializers."""
    a = onnx.load(export(checkpoints["release-fp4"], tmp_path / "a.onnx", max_seq_len=64).path)
    b = onnx.load(export(checkpoints["hf-fp4"], tmp_path / "b.onnx", max_seq_len=64).path)
    ia = {i.name: onnx.numpy_helper.to_array(i) for i in a.graph.initializer}
    ib = {i.name: onnx.numpy_helper.to_array(i) for i in b.graph.initializer}
    assert ia.keys() == ib.keys()
    for name in ia:
        np.testing.assert_array_equal(ia[name], ib[name], err_msg=name)


def test_float32_export_of_a_quantized_checkpoint_is_its_exact_dequantization(tmp_path, checkpoints):
    q = export(checkpoints["release-fp4"], tmp_path / "q.onnx", max_seq_len=64)
    f = export(checkpoints["release-fp4"], tmp_path / "f.onnx", max_seq_len=64, dtype="float32")
    assert f.weights.startswith("float32:") and "fp" not in f.weights
    ids = tokens(9, 12)
    lq, _ = OrtModel(q.path).prefill_chunks(ids, [12])
    lf, _ = OrtModel(f.path).prefill_chunks(ids, [12])
    assert_close(lq, lf, 1e-5)


def _swap_nibbles(tensors):
    for name, (dt, arr) in list(tensors.items()):
        if ".ffn.experts." in name and dt == "I8":
            u = arr.view(np.uint8)
            tensors[name] = (dt, ((u << 4) | (u >> 4)).astype(np.uint8).view(np.int8))


def _bump_scales(tensors):
    for name, (dt, arr) in list(tensors.items()):
        if ".ffn.experts." in name and name.endswith(".scale"):
            tensors[name] = (dt, (arr.view(np.uint8) + 1).view(arr.dtype))


@pytest.mark.parametrize("plant", [_swap_nibbles, _bump_scales])
def test_planted_fp4_bugs_move_the_logits(tmp_path, checkpoints, plant):
    """The comparison above can fail: a checkpoint whose FP4 nibbles are swapped (or scales off by
    one exponent) exports logits far outside TOL of the true checkpoint's reference."""
    src = checkpoints["release-fp4"]
    bad = tmp_path / "bad"
    _rewrite(src, bad, plant)
    ids = tokens(5, 20)
    ref = reference_logits(reference_model(src), ids)
    logits, _ = OrtModel(export(bad, tmp_path / "m.onnx", max_seq_len=64).path).prefill_chunks(ids, [20])
    assert float(np.abs(logits - ref).max()) > 100 * TOL


# --------------------------------------------------------------------------------------------------
# bad checkpoints


_NP = {"F8_E4M3": np.uint8, "F8_E8M0": np.uint8, "U8": np.uint8, "I8": np.int8, "BF16": np.uint16,
       "F32": np.float32, "I64": np.int64, "I32": np.int32}


def _read_all(path):
    """name -> (safetensors dtype, array of its shape) of every tensor in ``path``."""
    out = {}
    for name, entry in read_safetensors_header(path).items():
        raw = np.fromfile(path, dtype=np.uint8, count=entry.nbytes, offset=entry.offset)
        out[name] = (entry.dtype, raw.view(_NP[entry.dtype]).reshape(tuple(entry.shape)))
    return out


def _rewrite(src, dst, tensor_edit=None, config_edit=None):
    """A copy of checkpoint ``src`` with its tensors (name -> (safetensors dtype, array)) and
    config.json edited."""
    os.makedirs(dst, exist_ok=True)
    path = os.path.join(src, "model.safetensors")
    tensors = _read_all(path)
    if tensor_edit:
        tensor_edit(tensors)
    write_safetensors(os.path.join(dst, "model.safetensors"), tensors)
    with open(os.path.join(src, "config.json")) as f:
        cfg = json.load(f)
    if config_edit:
        config_edit(cfg)
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(cfg, f)
    return dst


def _quant(key, value):
    def edit(cfg):
        cfg["quantization_config"][key] = value
    return edit


def _no_quant(cfg):
    del cfg["quantization_config"]
    cfg.pop("expert_dtype", None)


def _edit_top(key, value):
    def edit(cfg):
        cfg[key] = value
    return edit


def _drop(name):
    def edit(tensors):
        del tensors[name]
    return edit


def _shrink(name):
    def edit(tensors):
        dt, arr = tensors[name]
        tensors[name] = (dt, arr[:-1])
    return edit


def _nan_scale(name):
    def edit(tensors):
        dt, arr = tensors[name]
        arr = arr.copy()
        arr.reshape(-1)[3] = 255
        tensors[name] = (dt, arr)
    return edit


def _retype(name, dt):
    def edit(tensors):
        tensors[name] = (dt, tensors[name][1])
    return edit


WQ = "layers.1.attn.wq_a"
BAD = {
    "quant_method": (dict(config_edit=_quant("quant_method", "gptq")),
                     r"'quantization_config\.quant_method': expected 'fp8'.*got 'gptq'"),
    "fmt": (dict(config_edit=_quant("fmt", "e5m2")), r"'quantization_config\.fmt': expected 'e4m3', got 'e5m2'"),
    "scale_fmt": (dict(config_edit=_quant("scale_fmt", "fp32")),
                  r"'quantization_config\.scale_fmt': expected 'ue8m0'.*got 'fp32'"),
    "block": (dict(config_edit=_quant("weight_block_size", [64, 64])),
              r"'quantization_config\.weight_block_size': expected \[128, 128\].*got \[64, 64\]"),
    "expert_dtype": (dict(config_edit=_edit_top("expert_dtype", "int4")),
                     r"field 'expert_dtype': expected 'fp4' or 'fp8', got 'int4'"),
    "missing_scale": (dict(tensor_edit=_drop(WQ + ".scale")),
                      r"tensor 'layers\.1\.attn\.wq_a\.weight' \(fp8\) has no scale tensor"),
    "scale_shape": (dict(tensor_edit=_shrink(WQ + ".scale")),
                    r"tensor 'layers\.1\.attn\.wq_a\.scale': expected shape \[1, 2\] \(scales of fp8 weight "
                    r"'layers\.1\.attn\.wq_a\.weight' \[128, 256\]\), got \[0, 2\]"),
    "nan_scale": (dict(tensor_edit=_nan_scale("layers.2.ffn.experts.3.w2.scale")),
                  r"tensor 'layers\.2\.ffn\.experts\.3\.w2\.weight scale': 1 non-finite \(NaN\) e8m0 scale"),
    "unannounced": (dict(config_edit=_no_quant),
                    r"tensor '.*' is stored as (F8_E4M3|I8), but config\.json announces no quantization"),
    "fp4_not_expert": (dict(tensor_edit=_retype(WQ + ".weight", "I8")),
                       r"tensor 'layers\.1\.attn\.wq_a\.weight' is stored as I8 \(packed FP4\), which config\.json "
                       r"does not announce for this tensor"),
    "scale_dtype": (dict(tensor_edit=_retype(WQ + ".scale", "I8")),
                    r"tensor 'layers\.1\.attn\.wq_a\.scale': expected dtype F8_E8M0"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_quantized_checkpoint_is_refused_and_leaves_nothing(tmp_path, checkpoints, case):
    edits, message = BAD[case]
    src = _rewrite(checkpoints["release-fp4"], tmp_path / "src", **edits)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(ExportError, match=message):
        export(src, out_dir / "model.onnx")
    assert list(out_dir.iterdir()) == []


def test_header_reader_accepts_e8m0(checkpoints):
    header = read_safetensors_header(str(checkpoints["release-fp4"] / "model.safetensors"))
    assert header[WQ + ".scale"].dtype == "F8_E8M0" and header[WQ + ".weight"].dtype == "F8_E4M3"
