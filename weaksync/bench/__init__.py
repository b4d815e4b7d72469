"""Benchmarks a user would ask for: the scenario × mode matrix (matrix) and the PyTorch DDP baseline (ddp).

Nothing is imported here eagerly: the CLI reads the matrix defaults without loading torch."""
