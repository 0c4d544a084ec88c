"""`python -m dsa_core ...`: see dsa_core.cli."""

from dsa_core.cli import main

raise SystemExit(main())
