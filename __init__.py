"""tide: a kernel-first compiler stack for DeepSeek-V4-class models.

``tide.load(path)`` runs a compiled artifact with tide's C runtime (needs only numpy and cffi);
``tide.compiler`` compiles ONNX (needs TVM); ``tide.compiler.export`` writes V4 ONNX (needs torch).
"""

__version__ = "0.1.0"


def load(path, device="cpu", **options):
    """Loads a compiled ``.tide`` artifact: ``tide.runtime.load``, with every option it takes
    (``verify``, ``num_threads``, ``copy_weights``, ...)."""
    from .runtime import load as _load

    return _load(path, device=device, **options)
