"""tide.targets: one module per target: its TVM target, what its artifacts require of the machine,
and how every kernel is scheduled for it."""
