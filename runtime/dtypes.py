"""The dtype and device tables of the artifact format and the runtime.

A dtype is a name ("float32", "bfloat16", "int64", "bool", ...) stored as a DLPack (code, bits) with
one lane; a device is "cpu", "cuda[:N]" or "ascend[:N]", its kind the number the C runtime and an
artifact's target use. Needs only numpy (ml_dtypes for bfloat16 arrays), not cffi, so that the
compiler's artifact writer can import it too.
"""

from __future__ import annotations

import re

import numpy as np

from .errors import TideError

# dtype name -> DLPack (code, bits)
DTYPES = {
    "int8": (0, 8), "int16": (0, 16), "int32": (0, 32), "int64": (0, 64),
    "uint8": (1, 8), "uint16": (1, 16), "uint32": (1, 32), "uint64": (1, 64),
    "float16": (2, 16), "float32": (2, 32), "float64": (2, 64),
    "bfloat16": (4, 16), "bool": (6, 8),
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
ITEMSIZE = {name: bits // 8 for name, (_, bits) in DTYPES.items()}

# device name -> tide_model_options_t.device_kind, also the kind of an artifact's target
DEVICE_KINDS = {"cpu": 1, "cuda": 2, "ascend": 3}

_DEVICE = re.compile(r"(cpu|cuda|ascend)(?::([0-9]+))?$")


def np_dtype(name: str) -> np.dtype:
    """The numpy dtype of a dtype name (bfloat16: ml_dtypes.bfloat16, TideError without ml_dtypes)."""
    if name == "bfloat16":
        try:
            import ml_dtypes
        except ImportError:
            raise TideError("bfloat16 tensors as numpy arrays need the ml_dtypes package (pip install "
                            "ml_dtypes), or use run_dlpack") from None
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def describe(dtype: str, shape) -> str:
    """A tensor's dtype and shape as messages show them: ``float32[2, 3]``."""
    return f"{dtype}{list(shape)}"


def parse_device(device: str) -> tuple[str, int]:
    """"cpu" -> ("cpu", 0); "cuda" / "cuda:N" -> ("cuda", N); "ascend" / "ascend:N" -> ("ascend", N)."""
    m = _DEVICE.match(device) if isinstance(device, str) else None
    if m is None or (m.group(1) == "cpu" and m.group(2) not in (None, "0")):
        raise TideError(f"device must be 'cpu', 'cuda[:<ordinal>]' or 'ascend[:<ordinal>]', got {device!r}")
    return m.group(1), int(m.group(2) or 0)
