"""tide's Ascend kernels, one per file, each emitting HIVM MLIR text for one SoC with its tiling."""
