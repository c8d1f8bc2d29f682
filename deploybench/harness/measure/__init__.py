"""What a cell measures: timing and its statistics, memory in a fresh process, accuracy against the
reference, detection quality, and a description of the machine. Plain modules: no pytest, no workers."""
