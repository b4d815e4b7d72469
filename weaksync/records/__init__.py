"""What a run records: its event logs and JSON files (read by summary and report, written by every role)."""
