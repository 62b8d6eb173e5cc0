"""Prepares the GPU check bundle HERE (TVM, torch, transformers, nvcc; no GPU needed).

For each model (tiny and a reduced flash-2layer): export the ONNX graph and checkpoint, compile it
with ``tide compile --target cuda --arch sm_90``, and store what ``bench/gpu/run.sh`` needs on a GPU
machine without TVM: the artifact, a seeded prompt, and the reference from transformers'
DeepseekV4ForCausalLM on the same checkpoint (greedy tokens and teacher-forced logits of every
position). Then, in ``kernels/``, the benchmark suite's CUDA bundle (``tide bench --prepare cuda``)
of the V4-Flash kernel cases that fit the bytes left. Run from the repository root:

    .venv/bin/python -m tide.bench.gpu.prepare [--out bench/gpu/bundle] [--arch sm_90]

The bundle stays under BUNDLE_LIMIT (the GPU machine receives at most 64 MiB, working tree included).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Rotary tables for 512 positions (the sessions' capacity); every other dimension of tiny is its
# built-in config (its top-k of 4 exercises the sparse selection on the GPU).
SHORT = {"max_position_embeddings": 512}
MODELS = {
    "tiny": {"config": "tiny", "overrides": dict(SHORT), "max_seq_len": 512, "prompt": 24, "new": 16,
             "chunk": 16, "seed": 0},
    # V4-Flash's head_dim (512), rope dims, layer kinds and indexer shape; widths cut so the bundle
    # fits the 64 MiB a GPU machine receives (the full-width 2-layer model is ~2 GB of fp32 weights).
    "flash-2layer": {"config": "flash-2layer",
                     "overrides": {"vocab_size": 1024, "n_routed_experts": 4, "num_experts_per_tok": 2,
                                   "hidden_size": 128, "num_attention_heads": 4, "q_lora_rank": 64,
                                   "o_groups": 2, "o_lora_rank": 64, "moe_intermediate_size": 64,
                                   "index_n_heads": 16, **SHORT},
                     "max_seq_len": 512, "prompt": 40, "new": 8, "chunk": 32, "seed": 0},
}
BUNDLE_LIMIT = 56 << 20


def prepare_model(name: str, spec: dict, out: str, arch: str, work: str) -> dict:
    import torch
    from transformers import DeepseekV4ForCausalLM

    from ...compiler.driver import CompileOptions, compile_model
    from ...compiler.export import export

    onnx_path, ckpt = os.path.join(work, f"{name}.onnx"), os.path.join(work, f"{name}-ckpt")
    art = os.path.join(out, f"{name}.tide")
    t0 = time.time()
    export(spec["config"], onnx_path, seed=spec["seed"], max_seq_len=spec["max_seq_len"],
           config_overrides=spec["overrides"], save_checkpoint=ckpt)
    t1 = time.time()
    result = compile_model(onnx_path, art, CompileOptions(target="cuda", arch=arch, prefill_chunks=(spec["chunk"],),
                                                          all_logits=True, progress=False))
    t2 = time.time()
    ref = DeepseekV4ForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    vocab = ref.config.vocab_size
    prompt = np.random.default_rng(spec["seed"] + 1).integers(0, vocab, (1, spec["prompt"])).astype(np.int64)
    with torch.no_grad():
        full = ref.generate(torch.from_numpy(prompt), max_new_tokens=spec["new"], do_sample=False)
        logits = ref(full).logits.float().numpy()
    tokens = full[:, spec["prompt"]:].numpy().astype(np.int64)
    np.savez_compressed(os.path.join(out, f"{name}.npz"), prompt=prompt, tokens=tokens,
                        logits=logits[:, :-1].astype(np.float32))
    return {"artifact": os.path.basename(art), "reference": f"{name}.npz", "arch": arch,
            "prompt_len": spec["prompt"], "new_tokens": spec["new"], "vocab": vocab,
            "overrides": spec["overrides"], "max_seq_len": spec["max_seq_len"],
            "export_s": round(t1 - t0, 1), "compile_s": round(t2 - t1, 1),
            "artifact_bytes": os.path.getsize(art), "kernels": len(result.kernels)}


def copy_cffi(out: str) -> None:
    """cffi (with its compiled backend) and pycparser, for a GPU machine whose Python lacks them
    (usable only with the same Python minor version; run.sh says so)."""
    import cffi
    import pycparser

    lib = os.path.join(out, "pylib")
    os.makedirs(lib, exist_ok=True)
    for mod in (cffi, pycparser):
        shutil.copytree(os.path.dirname(mod.__file__), os.path.join(lib, mod.__name__), dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    import _cffi_backend

    shutil.copy(_cffi_backend.__file__, lib)
    with open(os.path.join(lib, "PYTHON_VERSION"), "w") as f:
        f.write(f"{sys.version_info.major}.{sys.version_info.minor}\n")


def _size(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(root, n)) for root, _, names in os.walk(folder) for n in names)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "bundle"))
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    manifest_path = os.path.join(args.out, "manifest.json")
    manifest = {}
    if os.path.exists(manifest_path):  # --models redoes some models and keeps the others
        with open(manifest_path) as f:
            manifest = json.load(f)
    with tempfile.TemporaryDirectory(prefix="tide-gpu-prep-") as work:
        for name in args.models.split(","):
            if name not in MODELS:
                parser.error(f"unknown model '{name}' (known: {', '.join(MODELS)})")
            manifest[name] = prepare_model(name, MODELS[name], args.out, args.arch, work)
            print(f"{name}: {json.dumps(manifest[name])}", flush=True)
    copy_cffi(args.out)
    with open(manifest_path, "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
    from ..cases import all_cases
    from ..prepare import prepare_bundle

    kernels = os.path.join(args.out, "kernels")
    shutil.rmtree(kernels, ignore_errors=True)
    prepare_bundle(all_cases(["flash"]), "cuda", Path(kernels), (BUNDLE_LIMIT - _size(args.out)) / 2**20,
                   arch=args.arch)
    total = _size(args.out)
    print(f"bundle {args.out}: {total / 2**20:.1f} MiB")
    if total > BUNDLE_LIMIT:
        print(f"bundle is over {BUNDLE_LIMIT >> 20} MiB: reduce the models", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
