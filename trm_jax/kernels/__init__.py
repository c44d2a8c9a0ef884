"""Hand-written kernels that XLA does not provide, with pure-XLA fallbacks (see matmul.py)."""
