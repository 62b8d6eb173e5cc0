"""The Ascend target (910B, 950): kernels as HIVM MLIR (``kernels/``), the analytic cost model
(``cost``) and the toolchain without a device (``toolchain``: compile check, CPU runner).
See docs/ascend.md."""
