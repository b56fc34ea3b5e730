"""motte's WASI preview1 implementation, inside the keep.

motte owns every file descriptor the workload sees (channel streams for stdio, confined host
directories, and later TLS sockets and encrypted files), so it implements preview1 itself on
wasmtime's raw host-function interface rather than wrapping wasmtime's built-in WASI, whose file
descriptors cannot be shared with host code.
"""
