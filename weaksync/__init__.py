"""weaksync: a parameter server for PyTorch with partial push and partial pull."""

__version__ = "0.1.0"
