"""Code both the host and the keep run: the formats and protocols they speak to each other (pure,
sans-I/O functions and values) and the one threaded I/O edge of the channel that every backend
uses (:mod:`~motte.shared.endpoint`: threads, poll, sockets).

All of it goes into the keep image, so it is part of the keep's trusted computing base; it imports
nothing from motte outside this package (``tests/keep/test_import_boundary.py``). What only the
programs outside the keep share goes in ``motte.outside``, which is not in the image.
"""
