"""`make demo`: prepare MovieLens-100K, train the demo experiment on CPU, print the per-size table."""

from __future__ import annotations

import sys


def main() -> None:
    sys.argv = [sys.argv[0], "experiment=demo", *sys.argv[1:]]
    from recsys.training.cli import main as train_main

    train_main()


if __name__ == "__main__":
    main()
