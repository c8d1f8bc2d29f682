"""The one cell pipeline (resolve, convert, load, first inference, time, memory, accuracy), the worker
process that runs it, and the matrix of cells that the CLI, the pytest plugin and the gate all drive."""
