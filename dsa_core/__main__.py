"""`python -m dsa_core ...`: the command line (cli.main), launched from the engine's name.

The one module of dsa_core that imports a front end: an entry point that nothing imports (tests/test_imports.py
lets it, and only it, through).
"""

from cli.main import main

raise SystemExit(main())
