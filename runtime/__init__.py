"""tide.runtime: the Python API over tide's C runtime (libtide_runtime.so through cffi, ABI mode).

Needs only numpy and cffi (ml_dtypes for bfloat16 numpy arrays); never imports TVM, torch or onnx.

    model = tide.runtime.load("model.tide")          # tide.load re-exports it
    outs = model.run({"x": x})                        # onnxruntime convention: fresh numpy arrays
    views = model.run_dlpack({"x": torch_tensor})     # zero copy both ways (DLPack)
    s = model.session()                               # decode models: prefill / decode / generate
    ids = s.generate(prompt_ids, 32)

Inputs are numpy arrays or any object implementing ``__dlpack__`` (a torch CPU tensor, ...); they are
used in place when C-contiguous and 64-byte aligned (kernels use aligned vector loads), otherwise
copied into an aligned staging buffer. dtypes and shapes must match exactly.

On a cuda model (``load(path, device="cuda:0")``) host inputs are copied to the device and outputs
back. When the data inputs are DLPack tensors on the model's CUDA device (torch CUDA tensors), the
run stays on the device: inputs are copied device to device into the session's buffers and
``run_dlpack`` returns device views (``torch.from_dlpack`` takes them without a copy).

Lifetimes: ``run`` returns copies. ``run_dlpack`` returns :class:`Tensor` views of the runtime's
memory (implementing ``__dlpack__``, so ``torch.from_dlpack`` / ``np.from_dlpack`` view them without a
copy): their contents are valid until the next run of the same model (``run``/``run_dlpack``) or
session; the memory itself stays allocated as long as any view or DLPack consumer is alive.

Thread safety: a Model may be shared by threads; ``Model.run``/``run_dlpack`` calls are serialized
on the model's internal session, and each :class:`Session` serializes its own calls. Different
sessions run in parallel (the C calls release the GIL).

Modules: ``model`` (Model, load), ``session`` (Session), ``runner`` (one entry run on one C session),
``dlpack`` (Tensor, borrowed DLPack inputs), ``profile`` (per-kernel profiles of a session's runs),
``dtypes`` (the dtype and device tables; numpy only),
``errors`` (TideError); the bindings: ``bindings`` (libtide_runtime.so loaded, statuses checked),
``_ffi`` (its cffi declarations), ``build`` (finds or builds it).
"""

import importlib

# public name -> the module that defines it, imported on first use: importing the package (which
# ``import tide.runtime.dtypes`` does) needs no cffi
_EXPORTS = {"load": "model", "Model": "model", "TensorInfo": "model", "MemoryInfo": "model",
            "Session": "session", "prefill_chunks": "session", "Tensor": "dlpack", "TideError": "errors",
            "Profile": "profile", "KernelProfile": "profile"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = globals()[name] = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
