"""The tide artifact (docs/artifact-format.md): ``format`` (constants, data model, the loader's
rules), ``writer`` (``write_artifact``), ``reader`` (``read_artifact``) and ``encoding`` (the binary
primitives the targets' DEVICE_CODE formats share). The C loader is runtime/src/artifact.c.
"""

from .format import (DTYPES, FEATURES, ArtifactError, Buffer, Call, Entry, IOBinding, Plan, StateSpec, TargetInfo,
                     WeightSpec, feature_mask, nbytes_of, np_dtype, validate_plan)
from .reader import Artifact, load_weight, read_artifact
from .writer import write_artifact

__all__ = ["DTYPES", "FEATURES", "Artifact", "ArtifactError", "Buffer", "Call", "Entry", "IOBinding", "Plan",
           "StateSpec", "TargetInfo", "WeightSpec", "feature_mask", "load_weight", "nbytes_of", "np_dtype",
           "read_artifact", "validate_plan", "write_artifact"]
