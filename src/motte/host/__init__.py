"""Code that runs on the untrusted host: it launches keeps and relays their bytes."""
