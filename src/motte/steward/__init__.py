"""The Steward: an attestation certificate authority for keeps (tenant side; trusted).

A keep sends a CSR carrying evidence bound to its key; the Steward verifies the evidence against
its policy and issues a short-lived certificate saying what was attested, or refuses. Every answer
is logged durably before it is sent.

    check.py    the CSR and its evidence -> Attested, or Refused (pure)
    issuer.py   the CA and the certificates it issues
    policy.py   the Steward policy file (embeds or references the attestation policy)
    log.py      the SQLite audit log with group commit
    app.py      the HTTP service (aiohttp)
    devca.py    the throw-away CA of ``motte steward serve --dev``
"""
