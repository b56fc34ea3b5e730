"""The host agent (``motte host serve``): the long-running service on the untrusted host that
launches empty keeps for tenants and relays their connections to them, as ciphertext.

- :mod:`.app`: the HTTP API and its routes; :mod:`.server`: listening and stopping.
- :mod:`.keeps`: the keeps it launched, each driven by a thread of its own.
- :mod:`.relay`: a session websocket relayed to a keep's provisioning stream.
- :mod:`.auth`: where it may listen, and its bearer token.

The API is documented in ``docs/deploy.md``; its wire conventions are :mod:`motte.outside.agent_api`.
"""
