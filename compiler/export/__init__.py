"""tide.compiler.export: DeepSeek-V4 checkpoints and built-in configs -> the ONNX graph of
docs/onnx-contract.md (`tide export`)."""

from .api import ExportResult, export
from .cli import add_export_arguments, run_export
from .config import BUILTIN_CONFIGS, ModelSpec
from .errors import ExportError
from .functions import FUNCTION_NAMES
from ..artifact.format import StateSpec

__all__ = [
    "BUILTIN_CONFIGS",
    "ExportError",
    "ExportResult",
    "FUNCTION_NAMES",
    "ModelSpec",
    "StateSpec",
    "add_export_arguments",
    "export",
    "run_export",
]
