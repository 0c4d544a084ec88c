"""`python -m dsa_core ...`: see cli.main."""

from cli.main import main

raise SystemExit(main())
