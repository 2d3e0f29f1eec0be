"""The toy world: a tiny Llama family trained offline per seed (``python -m studies.toy``)."""
