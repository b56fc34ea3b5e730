"""``motte deploy``, the tenant's side: verify a keep on its own TLS session, then provision it."""
