"""``python -m data``: every dataset name with its origin, label columns and row count."""
import argparse
import sys

import pandas as pd

from cli import run_main
from data.registry import describe


def main(argv=None) -> int:
    argparse.ArgumentParser(prog="python -m data", description=__doc__.strip("`")).parse_args(argv)
    table = describe()
    with pd.option_context("display.max_rows", None, "display.max_colwidth", 90, "display.width", 250):
        print(table.to_string(index=False))
    print("\nrows: embedded and their mixes from the prepare record (python data/prepare.py); "
          "paper datasets load from the hub (needs `datasets`) or path=.")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, "python -m data"))
