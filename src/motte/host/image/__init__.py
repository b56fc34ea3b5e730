"""The micro-VM keep image: a pinned Debian kernel and a reproducible initramfs holding the keep
runtime (Python, wasmtime, motte's in-keep code). Built on the host, measured before launch."""
