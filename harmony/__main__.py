"""`python -m harmony`: the same command line as the `harmony` script."""

from harmony.cli import main

raise SystemExit(main())
