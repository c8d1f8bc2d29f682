"""The regression gate: statistics, interleaved re-runs and the verdict rules. Plain modules: no pytest."""
