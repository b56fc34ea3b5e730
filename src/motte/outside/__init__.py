"""Code the programs outside the keep share: the host agent, the tenant's tools, the CLI, the
Steward and the registry (reading files a user names, bearer tokens, listening sockets, database
URLs, the host agent's HTTP API).

None of it is in the keep image, so none of it is in the keep's trusted computing base: the keep
and ``shared/`` import nothing from here (``tests/keep/test_import_boundary.py``). Code that the
keep runs too belongs in ``shared/``.
"""
