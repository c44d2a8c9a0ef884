"""Built-in recursion schemes, one file each (the contract: trm_jax/recursion.py)."""
