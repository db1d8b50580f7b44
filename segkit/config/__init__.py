"""Config checks before any work is done.

- ``keys``: which keys exist, renamed and removed keys, did-you-mean messages;
- ``schema``: the plain nodes (launch, loader, calibrate; trainer) as typed dataclasses;
- ``checks``: command-line, key, value, component and range checks of a composed config.
"""
