"""Per-layer choice of weight format, kernel and config (heuristic or autotuned)."""
