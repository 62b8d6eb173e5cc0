"""tide.ops: target-independent kernel definitions (TensorIR written as code, shape-parameterized),
their references and cost counts. Nothing here imports ``tide.targets``.

One kernel per module. Each module gives ``prim_func(...)`` (the TensorIR definition for static
shapes, unscheduled), ``reference(...)`` (plain numpy, float64) and ``cost(...)`` (analytic FLOPs
and minimum bytes moved). A module serving a tide-domain ONNX function also gives
``relax_convert(bb, inputs, attrs, *, choose, report)``: the Relax calls of its kernels, built with
the target's choices (``choose``, ``tide.targets.Target.choose``) and tagged with their identity
(``tide.ops.kernel``). ``rows``, ``quant`` and ``kernel`` are no kernels: the loop over independent
rows that the row-wise kernels share, the quantized formats' decoding expressions, and the
kernels' identity.
"""

# tide-domain ONNX functions (docs/onnx-contract.md) that a kernel of this package serves, with the
# module that defines it.
FUNCTION_KERNELS = {
    "RoPE": "rope",
    "RMSNorm": "rmsnorm",
    "SinkAttention": "sink_attention",
    "MoERouter": "router",
    "HashMoERouter": "router_hash",
    "SharedExpert": "moe_shared",
    "MoEExperts": "moe_experts",
    "SparseSinkAttention": "sink_attention_sparse",
    "LightningIndexer": "indexer",
    "Compressor": "compressor",
    "DequantizeFP8": "dequantize_fp8",
    "DequantizeFP4": "dequantize_fp4",
    "HyperConnectionPre": "hc_pre",
    "HyperConnectionPost": "hc_post",
}
