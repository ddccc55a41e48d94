"""Data: TOFU and MUSE loaders, embedded synthetic generators, formatting and collation."""
