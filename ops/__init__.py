"""tide.ops: kernel definitions (TensorIR, shape-parameterized), their references and cost counts.

One kernel per module. Each module gives ``prim_func(...)`` (the TensorIR definition for static
shapes; ``parallel`` chooses the CPU outer-loop kind), ``reference(...)`` (plain numpy) and
``cost(...)`` (analytic FLOPs and minimum bytes moved). ``rows`` is no kernel: the loop over
independent rows that the row-wise kernels share.
"""

# tide-domain ONNX functions (docs/onnx-contract.md) that a kernel of this package serves, with the
# module that defines it. Each such module gives ``TIDE_FUNCTION`` and ``relax_convert``.
FUNCTION_KERNELS = {
    "RMSNorm": "rmsnorm",
    "SinkAttention": "sink_attention",
    "MoERouter": "router",
    "HashMoERouter": "router_hash",
    "SharedExpert": "moe_shared",
    "MoEExperts": "moe_experts",
    "SparseSinkAttention": "sink_attention_sparse",
    "LightningIndexer": "indexer",
    "Compressor": "compressor",
}
