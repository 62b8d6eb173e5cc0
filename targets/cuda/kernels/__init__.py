"""Kernels written for CUDA alone (warp fragments, ``mma.sync``): variants the CUDA target builds
in place of a tide kernel's definition, same signature and contract (``attention``/``moe`` rules)."""
