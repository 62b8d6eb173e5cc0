"""llama.cpp as a whole-model DeepSeek-V4 prefill/decode baseline (a benchmark, never a dependency).

llama.cpp comes from the ``llama-cpp-python`` sdist, built here for this CPU; its vendored
``convert_hf_to_gguf.py`` turns a checkpoint into a GGUF file. That converter reads only
DeepSeek's release layout (``embed.weight``, ``layers.N.attn.wq_a.weight``, per-expert
``ffn.experts.E.w1.weight`` stored as MXFP4, ...), so :func:`convert` first rewrites tide's
transformers checkpoints (``model.layers.N.self_attn.q_a_proj.weight``, stacked
``mlp.experts.gate_up_proj``, ...) into that layout, inverting transformers' ``deepseek_v4``
entry of ``conversion_mapping.py``, then runs the converter with three changes: the routed
experts are written unquantized (stacked per layer, f32 or q8_0 like every other matrix) instead
of requiring MXFP4 blocks, ``--outtype`` is honoured (the stock class keeps every source dtype),
and the vocabulary is synthetic (tide's models have none; only token ids are ever fed).

    python -m tide.bench.llamacpp setup
    python -m tide.bench.llamacpp convert CKPT OUT.gguf [--outtype f32|q8_0]
    python -m tide.bench.llamacpp check CKPT OUT.gguf --prompt-len 32 --new-tokens 8

llama.cpp's DeepSeek-V4 runs compression rates 4 (CSA) and 128 (HCA) only, and an indexer head dim
that is a multiple of 64: tide's ``tiny`` config (HCA rate 16, indexer head dim 32) is refused;
``tiny`` with ``compress_rates`` {CSA: 4, HCA: 128} and ``index_head_dim`` 64 runs.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
DEFAULT_CACHE_DIR = Path("~/.cache/tide/llamacpp").expanduser()
# A copy of the sdist may already be on this machine: used before downloading.
LOCAL_SDIST_DIRS = (Path("/tmp/llama"),)
# llava/mtmd (multimodal) is loaded by llama_cpp only on use: not built.
CMAKE_ARGS = ("-DGGML_NATIVE=ON -DGGML_BLAS=OFF -DGGML_CUDA=OFF -DLLAMA_BUILD_TESTS=OFF "
              "-DLLAVA_BUILD=OFF")
NOT_INSTALLED = "llama-cpp-python is not installed: run python -m tide.bench.llamacpp setup"

_SDIST = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}"
_MODULE = __spec__.name if __spec__ is not None else __name__
# Bytes read from the checkpoint at once while rewriting it.
_CHUNK_BYTES = 256 << 20


# ---------------------------------------------------------------------------------------------
# setup


def vendor_dir(cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR) -> Path:
    """The sdist's ``vendor/llama.cpp`` (converter script, ``gguf-py``, ``conversion/``) kept by setup."""
    return Path(cache_dir).expanduser() / _SDIST / "vendor" / "llama.cpp"


def _installed_version(venv_python: str) -> str | None:
    res = subprocess.run(
        [venv_python, "-c", "import importlib.metadata as m; print(m.version('llama_cpp_python'))"],
        capture_output=True, text=True)
    return res.stdout.strip() if res.returncode == 0 else None


def _sdist_tarball(venv_python: str, cache_dir: Path) -> Path:
    """The sdist tarball: from a local copy, the cache, or PyPI (``pip download``)."""
    name = f"{_SDIST}.tar.gz"
    for d in (*LOCAL_SDIST_DIRS, cache_dir):
        if (d / name).is_file():
            return d / name
    cache_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run([venv_python, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                    "-d", str(cache_dir), f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"],
                   check=True)
    return cache_dir / name


def setup(venv_python: str = sys.executable,
          cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR) -> Path:
    """Install ``llama-cpp-python`` built for this CPU and unpack its sdist under ``cache_dir``.

    The package is built from the sdist (CPU only, ``-DGGML_NATIVE=ON``, no BLAS, no CUDA) into
    ``venv_python``'s environment; the unpacked sdist keeps ``vendor/llama.cpp`` for
    :func:`convert`. Both steps are skipped when already done. Returns :func:`vendor_dir`.
    """
    cache_dir = Path(cache_dir).expanduser()
    unpacked = cache_dir / _SDIST
    if not (vendor_dir(cache_dir) / "convert_hf_to_gguf.py").is_file():
        tarball = _sdist_tarball(venv_python, cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tarball) as tf:
            tf.extractall(cache_dir, filter="data")
        print(f"unpacked {tarball} to {unpacked}")
    if _installed_version(venv_python) != LLAMA_CPP_PYTHON_VERSION:
        env = dict(os.environ, CMAKE_ARGS=CMAKE_ARGS, FORCE_CMAKE="1",
                   CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 1))
        subprocess.run([venv_python, "-m", "pip", "install", "--no-cache-dir", str(unpacked)],
                       check=True, env=env)
    return vendor_dir(cache_dir)


# ---------------------------------------------------------------------------------------------
# checkpoint -> release layout

_LLAMA_CPP_RATIOS = {"compressed_sparse_attention": 4, "heavily_compressed_attention": 128}
class _Source:
    """One tensor of a safetensors file, or the part ``index`` of it (ints / slices on its leading
    dims), whose bytes are read in row chunks to bound memory."""

    def __init__(self, handle, name: str, index: tuple = ()):
        self._slice = handle.get_slice(name)
        self.dtype = self._slice.get_dtype()
        self.index = index
        full = self._slice.get_shape()
        self.shape = ([len(range(*i.indices(n))) for i, n in zip(index, full) if isinstance(i, slice)]
                      + list(full[len(index):]))

    def chunks(self):
        """The tensor's bytes, in chunks of whole rows of at most ``_CHUNK_BYTES`` (one row at least)."""
        import torch

        row = int(np.prod(self.shape[1:], dtype=np.int64)) * _itemsize(self.dtype)
        step = max(1, _CHUNK_BYTES // max(row, 1))
        for r in range(0, self.shape[0], step):
            part = self._slice[_merge_index(self.index, slice(r, min(r + step, self.shape[0])))]
            yield part.contiguous().view(-1).view(torch.uint8).numpy().tobytes()


def _itemsize(st_dtype: str) -> int:
    return {"F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4}[st_dtype]


def _merge_index(outer: tuple, rows: slice) -> tuple:
    """``outer`` (ints/slices on leading dims) then ``rows`` on the first remaining dim."""
    index = list(outer)
    for k, i in enumerate(index):
        if isinstance(i, slice):
            index[k] = slice(i.start + rows.start, i.start + rows.stop)
            return tuple(index)
    return (*index, rows)


def _release_tensors(handles: dict[str, object], config: dict):
    """(release name, :class:`_Source`) for every tensor of a transformers DeepSeek-V4 checkpoint:
    the exporter's name mapping (``layout_names``), the routed experts' stacked ``gate_up_proj`` /
    ``down_proj`` split into their per-expert parts."""
    from ..compiler.export.weights import layout_names

    inter, n_experts = config["moe_intermediate_size"], config["n_routed_experts"]
    for name, handle in handles.items():
        if name.endswith("mlp.experts.gate_up_proj"):  # [E, 2I, H] = cat(w1, w3) along dim 1
            w1_w3 = iter(layout_names(name, "release", n_experts))
            for e in range(n_experts):
                yield next(w1_w3)[0], _Source(handle, name, (e, slice(0, inter)))
                yield next(w1_w3)[0], _Source(handle, name, (e, slice(inter, 2 * inter)))
            continue
        if name.endswith("mlp.experts.down_proj"):  # [E, H, I] = stack of w2
            for e, (w2,) in enumerate(layout_names(name, "release", n_experts)):
                yield w2, _Source(handle, name, (e,))
            continue
        try:
            (release,), = layout_names(name, "release", n_experts)
        except (KeyError, ValueError) as err:
            raise ValueError(f"no release name for tensor {name!r}") from err
        yield release, _Source(handle, name)


def _write_safetensors(path: Path, tensors: list[tuple[str, _Source]]) -> None:
    """Write ``tensors`` as one safetensors file, streaming each tensor's bytes from its source."""
    header, offset = {}, 0
    for name, src in tensors:
        nbytes = int(np.prod(src.shape, dtype=np.int64)) * _itemsize(src.dtype)
        header[name] = {"dtype": src.dtype, "shape": src.shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for name, src in tensors:
            written = sum(f.write(chunk) for chunk in src.chunks())
            span = header[name]["data_offsets"]
            assert written == span[1] - span[0], name


def release_config(config: dict) -> dict:
    """The transformers config plus the release config's legacy keys that llama.cpp's converter reads.

    Raises ``ValueError`` for what llama.cpp's DeepSeek-V4 cannot run: compression rates other
    than 4 (CSA) and 128 (HCA), an indexer head dim that is not a multiple of 64, hash-routed
    layers that are not a prefix, a scaled main rope, or a compressed rope other than
    default/yarn.
    """
    layer_types, mlp_types = config["layer_types"], config["mlp_layer_types"]
    rates = config["compress_rates"]
    n_hash = sum(t == "hash_moe" for t in mlp_types)
    if mlp_types[:n_hash] != ["hash_moe"] * n_hash:
        raise ValueError(f"llama.cpp needs the hash-routed MoE layers first, got {mlp_types}")
    # src/models/deepseek4.cpp: "only supports compression ratios 0, 4, and 128".
    used = {t: rates[t] for t in set(layer_types) if t != "sliding_attention"}
    if any(r != _LLAMA_CPP_RATIOS[t] for t, r in used.items()):
        raise ValueError(f"llama.cpp's DeepSeek-V4 supports compression rates {_LLAMA_CPP_RATIOS}, "
                         f"got {used}")
    # llama.cpp rotates the lightning indexer's keys and queries with a Hadamard matrix of at least
    # 64 x 64 (llama_kv_cache::build_input_k_rot); a smaller head dim breaks the graph.
    if "compressed_sparse_attention" in used and config["index_head_dim"] % 64:
        raise ValueError(f"llama.cpp's DeepSeek-V4 needs index_head_dim a multiple of 64, "
                         f"got {config['index_head_dim']}")
    rope = config["rope_parameters"]
    if rope["main"].get("rope_type", "default") != "default":
        raise ValueError(f"llama.cpp applies no scaling to the main rope, got {rope['main']}")
    out = dict(config)
    out.update(
        compress_ratios=[0 if t == "sliding_attention" else rates[t] for t in layer_types],
        num_hash_layers=n_hash,
        qk_rope_head_dim=int(config["head_dim"] * config["partial_rotary_factor"]),
    )
    compress = rope["compress"]
    kind = compress.get("rope_type", "default")
    if kind == "yarn":
        if compress.get("attention_factor", 1.0) != 1.0:
            raise ValueError(f"llama.cpp's DeepSeek-V4 yarn assumes attention_factor 1, got {compress}")
        # transformers' yarn defaults; llama.cpp applies this yarn to the compressed layers only.
        out["rope_scaling"] = {
            "type": "yarn", "factor": compress["factor"],
            "original_max_position_embeddings": compress["original_max_position_embeddings"],
            "beta_fast": compress.get("beta_fast", 32.0), "beta_slow": compress.get("beta_slow", 1.0)}
    elif kind != "default":
        raise ValueError(f"llama.cpp's DeepSeek-V4 supports a default or yarn compressed rope, got {compress}")
    return out


def write_release_checkpoint(hf_checkpoint_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Rewrite a transformers ``DeepseekV4ForCausalLM`` checkpoint in DeepSeek's release layout.

    Writes ``out_dir/model.safetensors`` (tensor by tensor, a few hundred MiB in memory at most)
    and ``out_dir/config.json`` (:func:`release_config`). Returns ``out_dir``.
    """
    from safetensors import safe_open

    src, out = Path(hf_checkpoint_dir), Path(out_dir)
    config = json.loads((src / "config.json").read_text())
    if config.get("model_type") != "deepseek_v4":
        raise ValueError(f"{src} is not a DeepSeek-V4 checkpoint (model_type {config.get('model_type')!r})")
    files = sorted(glob.glob(str(src / "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {src}")
    release = release_config(config)  # refuses what llama.cpp cannot run before writing GBs
    out.mkdir(parents=True, exist_ok=True)
    handles = {}
    for file in files:
        f = safe_open(file, "pt")
        handles.update({k: f for k in f.keys()})
    tensors = sorted(_release_tensors(handles, config), key=lambda item: item[0])
    _write_safetensors(out / "model.safetensors", tensors)
    (out / "config.json").write_text(json.dumps(release, indent=2))
    return out


# ---------------------------------------------------------------------------------------------
# release layout -> GGUF (runs in a child process, with the vendored converter on sys.path)


def _run_vendor_converter(vendor: str, release_dir: str, out_gguf: str, outtype: str,
                          model_name: str) -> None:
    """Run the vendored ``convert_hf_to_gguf.py`` on a release-layout directory.

    Its ``DeepseekV4Model`` is replaced by a subclass for unquantized checkpoints: routed experts
    are stacked per layer and written like any other matrix (the stock class insists on MXFP4
    blocks with e8m0 scales, as in DeepSeek's FP4 release), ``outtype`` decides the matrices'
    type (the stock class pins every tensor to its source dtype; under q8_0 the hyper-connection
    tensors and the compressors' position biases stay f32, as norms, biases, the router and the
    indexer's weights_proj do by the converter's own rules), and the vocabulary is a placeholder
    (``<tI>`` for every id; no text is ever tokenized).
    """
    sys.path[:0] = [vendor, os.path.join(vendor, "gguf-py")]
    import gguf
    import torch

    import convert_hf_to_gguf
    from conversion import ModelBase, ModelType, TextModel
    from conversion.deepseek import DeepseekV4Model

    T = gguf.MODEL_TENSOR
    expert_keys = {"w1": T.FFN_GATE_EXP, "w2": T.FFN_DOWN_EXP, "w3": T.FFN_UP_EXP}
    keep_f32 = (T.HC_HEAD_FN, T.HC_HEAD_BASE, T.HC_HEAD_SCALE, T.HC_ATTN_FN, T.HC_ATTN_BASE,
                T.HC_ATTN_SCALE, T.HC_FFN_FN, T.HC_FFN_BASE, T.HC_FFN_SCALE,
                T.ATTN_COMPRESSOR_APE, T.INDEXER_COMPRESSOR_APE)

    class UnquantizedDeepseekV4(DeepseekV4Model):
        model_arch = gguf.MODEL_ARCH.DEEPSEEK4

        def set_vocab(self):
            n = self.hparams["vocab_size"]
            w = self.gguf_writer
            w.add_tokenizer_model("gpt2")
            w.add_tokenizer_pre("default")
            w.add_token_list([f"<t{i}>" for i in range(n)])
            w.add_token_types([gguf.TokenType.NORMAL] * n)
            w.add_token_merges(["< t"])  # llama.cpp requires merges for a BPE vocabulary
            for key, add in (("bos_token_id", w.add_bos_token_id), ("eos_token_id", w.add_eos_token_id)):
                if isinstance(self.hparams.get(key), int):
                    add(self.hparams[key])

        def generate_extra_tensors(self):
            for name in self._write_hash_routing_tensors():
                del self.model_tensors[name]
            for bid in range(self.hparams["num_hidden_layers"]):
                for proj in expert_keys:
                    names = [f"layers.{bid}.ffn.experts.{e}.{proj}.weight"
                             for e in range(self.hparams["n_routed_experts"])]
                    yield (f"layers.{bid}.ffn.experts.{proj}.weight",
                           torch.stack([self.model_tensors.pop(n)() for n in names]))

        def modify_tensors(self, data_torch, name, bid):
            m = re.fullmatch(r"layers\.\d+\.ffn\.experts\.(w[123])\.weight", name)
            if m is not None:
                return [(self.format_tensor_name(expert_keys[m[1]], bid), data_torch)]
            return super().modify_tensors(data_torch, name, bid)

        def tensor_force_quant(self, name, new_name, bid, n_dims):
            if any(self.match_model_tensor_name(new_name, key, bid) for key in keep_f32):
                return gguf.GGMLQuantizationType.F32
            return False

        def prepare_tensors(self):
            TextModel.prepare_tensors(self)  # the stock class would label the file MXFP4

    ModelBase._model_classes[ModelType.TEXT]["DeepseekV4ForCausalLM"] = UnquantizedDeepseekV4
    sys.argv = ["convert_hf_to_gguf.py", release_dir, "--outfile", out_gguf, "--outtype", outtype,
                "--model-name", model_name]
    convert_hf_to_gguf.main()


def convert(hf_checkpoint_dir: str | os.PathLike, out_gguf: str | os.PathLike, outtype: str = "f32",
            cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR) -> Path:
    """Convert a transformers ``DeepseekV4ForCausalLM`` checkpoint to a GGUF file for llama.cpp.

    The release-layout copy (:func:`write_release_checkpoint`) lives in a temporary directory
    beside ``out_gguf`` (it is as large as the checkpoint) and is removed afterwards.
    ``outtype`` is ``f32`` or ``q8_0`` (matrices; norms, biases and hyper-connection tensors
    stay f32). Needs :func:`setup`'s vendored llama.cpp.
    """
    if outtype not in ("f32", "q8_0"):
        raise ValueError(f"outtype must be f32 or q8_0, got {outtype!r}")
    vendor = vendor_dir(cache_dir)
    if not (vendor / "convert_hf_to_gguf.py").is_file():
        raise FileNotFoundError(f"no llama.cpp converter in {vendor}: run python -m {_MODULE} setup")
    out_gguf = Path(out_gguf).resolve()
    out_gguf.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="release-", dir=out_gguf.parent) as release:
        write_release_checkpoint(hf_checkpoint_dir, release)
        code = (f"import sys; from {_MODULE} import _run_vendor_converter; "
                "_run_vendor_converter(*sys.argv[1:])")
        subprocess.run([sys.executable, "-c", code, str(vendor), release, str(out_gguf), outtype,
                        Path(hf_checkpoint_dir).resolve().name], check=True)
    return out_gguf


# ---------------------------------------------------------------------------------------------
# running


class LlamaCppDecoder:
    """Prefill + exact greedy decode with llama.cpp (``llama_cpp.Llama``) on a converted GGUF.

    Logits are read with ``llama_get_logits_ith`` after each ``eval`` and argmax'ed here (no
    sampler). ``cache_type`` is the KV cache's ggml type name (``f32`` keeps the cache exact;
    llama.cpp's own default is ``f16``). ``max_batch`` bounds the prompt length (one ubatch).
    ``verbose`` shows llama.cpp's log (why a model fails to load, for one).
    """

    def __init__(self, gguf_path: str | os.PathLike, threads: int = os.cpu_count() or 1,
                 n_ctx: int = 512, max_batch: int | None = None, cache_type: str = "f32",
                 verbose: bool = False):
        try:
            import llama_cpp
        except ImportError as e:
            raise ImportError(NOT_INSTALLED) from e
        self._lib = llama_cpp
        batch = max_batch or n_ctx
        ggml_type = getattr(llama_cpp, f"GGML_TYPE_{cache_type.upper()}")
        self.llm = llama_cpp.Llama(
            model_path=str(gguf_path), n_ctx=n_ctx, n_batch=batch, n_ubatch=batch,
            n_threads=threads, n_threads_batch=threads, logits_all=False,
            type_k=ggml_type, type_v=ggml_type, verbose=verbose)
        self.n_vocab = self.llm.n_vocab()

    def _last_logits(self) -> np.ndarray:
        ptr = self._lib.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def prefill(self, prompt_ids) -> np.ndarray:
        """Clear the cache, evaluate ``prompt_ids`` (1-D or ``[1, T]``); the last position's logits."""
        ids = np.asarray(prompt_ids).reshape(-1).tolist()
        self._lib.llama_memory_clear(self._lib.llama_get_memory(self.llm.ctx), True)
        self.llm.reset()
        self.llm.eval(ids)
        return self._last_logits()

    def decode(self, token: int) -> np.ndarray:
        """Evaluate one more token; its logits."""
        self.llm.eval([int(token)])
        return self._last_logits()

    def generate(self, prompt_ids: np.ndarray, new_tokens: int) -> np.ndarray:
        """Greedy continuation of a ``[1, T]`` prompt: ``[1, new_tokens]`` int64 token ids."""
        if prompt_ids.shape[0] != 1:
            raise ValueError("llama.cpp baseline runs batch 1")
        out = [int(np.argmax(self.prefill(prompt_ids)))]
        while len(out) < new_tokens:
            out.append(int(np.argmax(self.decode(out[-1]))))
        return np.array([out], dtype=np.int64)

    def close(self) -> None:
        """Free the model and context now (rather than at garbage collection)."""
        self.llm.close()


def check(hf_checkpoint_dir: str, gguf_path: str, prompt_len: int = 32, new_tokens: int = 8,
          threads: int = os.cpu_count() or 1, repeat: int = 3) -> bool:
    """Compare llama.cpp's greedy tokens with transformers' on a seeded prompt; print timings.

    Prefill time is the median of ``repeat`` prefills after a warm-up; decode time per token is
    the median over ``repeat`` generations of (generation - prefill) / (new_tokens - 1).
    Returns whether the tokens match.
    """
    vocab = json.loads((Path(hf_checkpoint_dir) / "config.json").read_text())["vocab_size"]
    prompt = np.random.default_rng(0).integers(0, vocab, (1, prompt_len))

    dec = LlamaCppDecoder(gguf_path, threads, n_ctx=prompt_len + new_tokens,
                          max_batch=prompt_len)
    got = dec.generate(prompt, new_tokens)
    prefill_s, decode_s = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        token = int(np.argmax(dec.prefill(prompt)))
        t1 = time.perf_counter()
        for _ in range(new_tokens - 1):
            token = int(np.argmax(dec.decode(token)))
        t2 = time.perf_counter()
        prefill_s.append(t1 - t0)
        decode_s.append((t2 - t1) / max(new_tokens - 1, 1))
    dec.close()

    import torch
    from transformers import DeepseekV4ForCausalLM

    torch.set_num_threads(threads)
    ref = DeepseekV4ForCausalLM.from_pretrained(hf_checkpoint_dir, dtype=torch.float32).eval()
    ref.generation_config.eos_token_id = None  # always new_tokens tokens, as llama.cpp gives
    with torch.no_grad():
        want = ref.generate(torch.from_numpy(prompt), max_new_tokens=new_tokens,
                            do_sample=False)[:, prompt_len:].numpy()
    match = np.array_equal(got, want)
    print(f"llama.cpp    {got.tolist()}\ntransformers {want.tolist()}\n"
          f"tokens {'match' if match else 'DIFFER'}; prompt {prompt_len}, {new_tokens} new, "
          f"{threads} threads\n"
          f"llama.cpp prefill {statistics.median(prefill_s) * 1e3:.1f} ms, "
          f"decode {statistics.median(decode_s) * 1e3:.1f} ms/token")
    return match


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {_MODULE}", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("setup", help="build and install llama-cpp-python, keep its llama.cpp sources")
    p.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR))
    p = sub.add_parser("convert", help="transformers DeepSeek-V4 checkpoint -> GGUF")
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("--outtype", choices=("f32", "q8_0"), default="f32")
    p.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR))
    p = sub.add_parser("check", help="llama.cpp vs transformers greedy tokens, and llama.cpp timings")
    p.add_argument("checkpoint")
    p.add_argument("gguf")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=8)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    if args.cmd == "setup":
        print(setup(cache_dir=args.cache_dir))
    elif args.cmd == "convert":
        print(convert(args.checkpoint, args.out, args.outtype, cache_dir=args.cache_dir))
    else:
        return 0 if check(args.checkpoint, args.gguf, args.prompt_len, args.new_tokens,
                          args.threads, args.repeat) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
