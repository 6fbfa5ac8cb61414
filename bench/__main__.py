"""Run benchmarks: ``python -m bench [NAME ...] [--quick] [bench options]``.

Each benchmark is a module ``bench/<name>.py`` with ``main(argv) -> int``. With no name, every
available benchmark except the explicit-only ones runs in turn (options such as ``--quick`` passed
on); with a name, the remaining arguments go to that benchmark (``python -m bench sparse --help``).
"""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

#: Benchmarks in the order ``python -m bench`` runs them.
BENCHES: dict[str, str] = {
    "sparse": "sparse annotation vs dense and naive partial training on real data (Sugawara 2023)",
    "sam": "SAM prompt latency and mask quality",
    "api_load": "REST API latency: concurrent SAM clicks while a model trains",
    "user": "simulated user: SAM clicks, boxes, outlines in a Workspace; trains; AP vs band",
}
#: Run only when named (they start servers, need options of their own or take ~20 min).
EXPLICIT_ONLY: frozenset[str] = frozenset({"api_load", "user"})


def _load(name: str):
    try:
        return importlib.import_module(f"bench.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"bench.{name}":
            return None
        raise


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        for name, what in BENCHES.items():
            state = "" if _load(name) else "  (not available)"
            print(f"  {name:8s} {what}{state}")
        return 0
    if argv and not argv[0].startswith("-"):
        name, rest = argv[0], argv[1:]
        if name not in BENCHES:
            print(f"unknown benchmark {name!r}; available: {', '.join(BENCHES)}", file=sys.stderr)
            return 2
        module = _load(name)
        if module is None:
            print(f"benchmark {name!r} is not installed (bench/{name}.py missing)", file=sys.stderr)
            return 2
        return int(module.main(rest) or 0)
    status = 0
    for name in BENCHES:
        if name in EXPLICIT_ONLY:
            print(f"## {name}: run it with `python -m bench {name}`\n")
            continue
        module = _load(name)
        if module is None:
            print(f"## {name}: skipped (bench/{name}.py not available)\n")
            continue
        print(f"## {name}\n", flush=True)
        status = max(status, int(module.main(argv) or 0))
    return status


if __name__ == "__main__":
    sys.exit(main())
