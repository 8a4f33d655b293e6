"""python -m deeprec.info: what was built and what can run here.

Prints versions, whether the CPU and CUDA kernels were compiled and are usable
now (with the reason when not), the CUDA arch list and the thread count: the
first thing to paste into a bug report.
"""

from __future__ import annotations

import sys

from deeprec import cli
from deeprec.api.workflows import environment


def main(argv: list[str] | None = None) -> int:
    parser = cli.Parser(
        prog="python -m deeprec.info",
        description="Show deeprec's build (native kernels, CUDA archs) and what can run here.",
    )
    parser.parse_args(argv)
    facts = environment.collect()
    width = max(len(k) for k in facts)
    for key, value in facts.items():
        print(f"{key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
