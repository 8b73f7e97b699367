"""The foundation every other part imports and which imports nothing of the project: errors, atomic file IO, the
``Precision`` enum, resource and GPU probes, metrics, the tolerance table, the parity report and level-1 comparison.
Torch-free."""
