"""The package registry (``motte registry serve``): a store of workload packages, laid out and
spoken to as Enarx's Drawbridge (API v0.1.0), with tags a publisher can sign.

    formats.py  the wire formats both the server and its client use: names, content digests,
                Meta JSON, tree entries and directories, slugs, the API's paths (pure)
    signing.py  signed tags: a JWS over the tree's root entry, made and checked with joserfc
    store.py    the store on disk: content-addressed blobs, metadata in SQLite, atomic publish
    app.py      the HTTP API (aiohttp): the routes, who may do what, and every refusal
    server.py   listening (TLS, client certificates from a Steward) and stopping

``docs/registry.md`` describes the layout, the API and what is checked where. The client is
:mod:`motte.tenant.registry`.
"""
