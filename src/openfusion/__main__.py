"""`python -m openfusion` is the `openfusion` command."""

from openfusion.cli import main

raise SystemExit(main())
