"""Files that hold weights: written atomically, read as data (never as pickled code).

- ``checkpoint``: the training checkpoint: atomic save, safe load, resume lookup, RNG, writers;
- ``weights_file``: the ``.safetensors`` weights file to share, with the run's config as metadata;
- ``partial_load``: tolerant weight loading (prefixes, name and shape matching) for ``init_from``;
- ``allowlist``: what a config read from a file may build (segkit's models and datasets only).
"""
