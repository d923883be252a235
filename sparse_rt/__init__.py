"""sparse_rt: a sparse inference runtime for pruned and structured models."""
