"""Keep networking, inside the TCB: sockets over channel streams, TLS that ends in the keep."""
