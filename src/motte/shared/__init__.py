"""Pure formats shared by the host and the keep: no I/O, no imports outside this package."""
