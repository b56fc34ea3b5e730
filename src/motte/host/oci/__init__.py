"""An OCI runtime: containerd (through its runc shim) runs wasm images in motte keeps.

``motte-oci`` speaks runc's command line (``create``, ``start``, ``state``, ``kill``, ``delete``...).
A container is one keep: ``create`` starts the keep and a long-lived init process that waits for
``start``, then runs the bundle's wasm entry point and exits with the workload's status. See
docs/kubernetes.md.
"""
