"""`python -m spitguard`: the same as the `spitguard` console script."""

from spitguard.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
