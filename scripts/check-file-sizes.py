#!/usr/bin/env python3
"""Fails when a Rust source file is longer than 600 lines.

A file that long holds several things; split it where they part. Reads the
files git tracks (generated code lives under target/ and is not tracked).

Usage: scripts/check-file-sizes.py [MAX_LINES]
"""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    limit = int(sys.argv[1]) if len(sys.argv) > 1 else 600
    files = subprocess.run(
        ["git", "ls-files", "*.rs"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.split()
    long = []
    for f in files:
        with open(os.path.join(ROOT, f), encoding="utf-8") as fh:
            n = sum(1 for _ in fh)
        if n > limit:
            long.append((n, f))
    for n, f in sorted(long, reverse=True):
        print(f"{f}: {n} lines (at most {limit})")
    print(f"{len(files)} Rust files, {len(long)} over {limit} lines")
    return 1 if long else 0


if __name__ == "__main__":
    sys.exit(main())
