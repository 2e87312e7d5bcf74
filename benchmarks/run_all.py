"""`make bench`: run every benchmark (or `--only a,b`) and rewrite BENCHMARKS.md."""
from __future__ import annotations

import argparse
import importlib
import sys

from benchmarks.common import ORDER, assemble


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", default=",".join(ORDER), help=f"comma-separated subset of {ORDER}")
    args = parser.parse_args()
    for name in [n for n in args.only.split(",") if n]:
        if name not in ORDER:
            parser.error(f"unknown benchmark {name!r}; valid: {', '.join(ORDER)}")
        print(f"== benchmark {name}", flush=True)
        sys.argv = [f"bench_{name}"]  # each script runs with its defaults, never with run_all's arguments
        importlib.import_module(f"benchmarks.bench_{name}").main()
    print(f"wrote {assemble()}")


if __name__ == "__main__":
    main()
