"""tide.compiler: ONNX -> import -> kernel substitution -> per-target schedule -> plan -> artifact."""
