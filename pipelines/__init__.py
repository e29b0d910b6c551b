"""KFP pipelines: the DAG wiring and, beside each, its compiled YAML (``semcode compile`` writes it)."""
