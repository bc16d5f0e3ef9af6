"""``python -m linkage``: the same command line as the ``linkage`` console script."""

from .cli import entry

if __name__ == "__main__":
    entry()
