"""Training: the per-worker loop (``loop``) and the single-process recipe (``recipe``)."""
