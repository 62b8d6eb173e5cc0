"""Runs on the GPU machine (no TVM): loads each artifact of the bundle on ``cuda:0`` and checks it
against the transformers reference stored by ``prepare.py``: every teacher-forced logit (prefill of
prompt + generated tokens, all positions) within tolerance, and greedy generation token for token.

    python -m tide.bench.gpu.check BUNDLE_DIR [--device cuda:0]

Prints one line per check and a summary; exit status 0 only when every check passed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

# float32 on both sides; different reduction orders (GPU kernels vs torch on the CPU) compound over
# layers, Sinkhorn iterations and softmaxes to ~1e-5 of the logits' scale; 1e-3 is far below any
# real error (a wrong mask, state slot or routing choice moves logits by O(scale)).
LOGIT_TOL = 1e-3


def check_model(name: str, info: dict, bundle: str, device: str) -> list[tuple[str, bool, str]]:
    import tide

    ref = np.load(os.path.join(bundle, info["reference"]))
    prompt, tokens, want = ref["prompt"], ref["tokens"], ref["logits"]
    results = []
    t0 = time.time()
    model = tide.load(os.path.join(bundle, info["artifact"]), device=device)
    load_s = time.time() - t0

    full = np.concatenate([prompt, tokens[:, :-1]], axis=1)
    t0 = time.time()
    got = np.asarray(model.session().prefill(full, all_logits=True))
    prefill_s = time.time() - t0
    scale = float(np.abs(want).max())
    err = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
    where = np.unravel_index(int(np.abs(got - want).argmax()), want.shape) if got.shape == want.shape else None
    results.append((f"{name}: teacher-forced logits {list(want.shape)}",
                    err <= LOGIT_TOL * scale,
                    f"max |diff| {err:.3e} (tolerance {LOGIT_TOL * scale:.3e}, at {where}); shape {list(got.shape)}"))

    t0 = time.time()
    gen = np.asarray(model.session().generate(prompt, tokens.shape[1]))
    gen_s = time.time() - t0
    same = gen.shape == tokens.shape and bool((gen == tokens).all())
    first = "" if same else f"; first mismatch at {int(np.argmax((gen != tokens).reshape(-1)))}" \
        if gen.shape == tokens.shape else f"; shape {list(gen.shape)}"
    results.append((f"{name}: greedy generation of {tokens.shape[1]} tokens", same,
                    f"got {gen.reshape(-1).tolist()} want {tokens.reshape(-1).tolist()}{first}"))
    results.append((f"{name}: timings", True,
                    f"load {load_s:.2f}s, prefill {full.shape[1]} tokens {prefill_s:.3f}s, "
                    f"generate {tokens.shape[1]} tokens {gen_s:.3f}s"))
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle")
    parser.add_argument("--device", default="cuda:0")
    args = parser.parse_args(argv)
    with open(os.path.join(args.bundle, "manifest.json")) as f:
        manifest = json.load(f)
    results = []
    for name, info in manifest.items():
        try:
            results += check_model(name, info, args.bundle, args.device)
        except Exception as err:  # noqa: BLE001  (report every model, then fail)
            results.append((f"{name}: load and run", False, f"{type(err).__name__}: {err}"))
    for what, ok, detail in results:
        print(f"[{'PASS' if ok else 'FAIL'}] {what}: {detail}")
    failed = [r for r in results if not r[1]]
    print(f"SUMMARY: {len(results) - len(failed)}/{len(results)} checks passed"
          + (f"; FAILED: {', '.join(r[0] for r in failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
