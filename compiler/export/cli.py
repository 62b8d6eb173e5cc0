"""The `tide export` subcommand: argument definitions and the entry point the CLI calls."""

from __future__ import annotations

import argparse
import sys

from .api import DTYPES, OPSETS, export
from .config import BUILTIN_CONFIGS
from .errors import ExportError


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the `tide export SOURCE -o model.onnx ...` arguments to `parser`."""
    parser.add_argument("source", metavar="SOURCE",
                        help="a Hugging Face DeepSeek-V4 checkpoint directory (config.json + *.safetensors) "
                             f"or a built-in config: {', '.join(BUILTIN_CONFIGS)}")
    parser.add_argument("-o", "--output", required=True, help="the ONNX file to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights of a built-in config")
    parser.add_argument("--layers", type=int, default=None,
                        help="a built-in config's first N layers of its layer schedule (flash, pro: the released "
                             "V4-Flash / V4-Pro schedules, 43 and 61 layers)")
    parser.add_argument("--max-seq-len", type=int, default=None,
                        help="decode-state capacity in tokens (default: min(max_position_embeddings, 4096))")
    parser.add_argument("--batch", type=int, default=1, help="static batch size (default 1)")
    parser.add_argument("--opset", type=int, default=18, choices=OPSETS, help="ONNX opset (default 18)")
    parser.add_argument("--dtype", default="auto", choices=sorted(DTYPES),
                        help="storage of the weights: 'auto' keeps each as the checkpoint stores it (float32, bf16, "
                             "FP8/FP4 with scales), float32/bfloat16 convert all floating weights; compute is "
                             "float32 either way")
    parser.add_argument("--save-checkpoint", metavar="DIR", default=None,
                        help="also write the exported weights as a Hugging Face checkpoint directory")


def run_export(args: argparse.Namespace) -> int:
    """Runs the export described by parsed `args`; prints a summary and returns 0, or prints the
    error to stderr and returns 1 on bad input (ExportError)."""
    try:
        result = export(args.source, args.output, seed=args.seed, max_seq_len=args.max_seq_len, batch=args.batch,
                        opset=args.opset, dtype=args.dtype, save_checkpoint=args.save_checkpoint, layers=args.layers)
    except ExportError as err:
        print(f"tide export: error: {err}", file=sys.stderr)
        return 1
    spec = result.spec
    print(f"wrote {result.path}" + (f" (+ {result.data_path})" if result.data_path else ""))
    print(f"  {spec.n_layers} layers ({', '.join(spec.layer_kinds)}), {result.num_parameters:,} parameters, "
          f"{result.weight_bytes / 2**20:.1f} MiB of weights ({result.weights})")
    print(f"  batch {result.batch}, max_seq_len {result.max_seq_len}, opset {result.opset}, "
          f"{len(result.states)} state tensors")
    if result.checkpoint:
        print(f"  checkpoint: {result.checkpoint}")
    return 0
