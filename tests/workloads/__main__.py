"""``python -m tests.workloads [--force] [NAME ...]``: build workloads, print name, size and path."""

from __future__ import annotations

import argparse
import sys
import time

from tests.workloads import WorkloadBuildError, build_all, names, source, workload


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.workloads", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"workloads to build (default: all of {', '.join(names())})")
    parser.add_argument("--force", action="store_true", help="rebuild even if the cache is current")
    args = parser.parse_args(argv)
    start = time.monotonic()
    try:
        if args.names:
            built = {name: workload(name, force=args.force) for name in args.names}
        else:
            built = build_all(force=args.force)
    except WorkloadBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    width = max(len(name) for name in built)
    for name, path in built.items():
        print(f"{name:<{width}}  {path.stat().st_size:>8}  {path}  ({source(name).name})")
    print(f"{len(built)} workloads in {time.monotonic() - start:.2f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
