"""The tenant's side of the package registry: publishing packages to it, and fetching them from
it with every digest and the tag's signature checked before anything is used.

    policy.py   which publishers' signatures a tenant accepts (``publishers``, ``allow_unsigned``)
    client.py   the HTTPS client of the registry's API (Drawbridge v0.1.0)
    tree.py     a package folder as a Drawbridge tree (entries, directories, digests)
    publish.py  ``motte package publish``: the tag entry (signed or not), then the tree
    fetch.py    ``motte package fetch`` and deploying by name: the tag, its signature, the tree,
                and the :class:`motte.tenant.deploy.package.Package` it holds

The server is :mod:`motte.registry`; ``docs/registry.md`` describes both.
"""
