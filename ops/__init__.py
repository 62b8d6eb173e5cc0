"""tide.ops: kernel definitions (TensorIR, shape-parameterized), their references and cost counts.

One kernel per module. Each module gives ``prim_func(...)`` (the TensorIR definition for static
shapes; ``parallel`` chooses the CPU outer-loop kind), ``reference(...)`` (plain numpy) and
``cost(...)`` (analytic FLOPs and minimum bytes moved).
"""
