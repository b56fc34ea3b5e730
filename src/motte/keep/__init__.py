"""Code that runs inside the keep (the trusted computing base).

Nothing here may import ``motte.host``, ``motte.tenant`` or ``motte.cli``: a test enforces it.
"""
