"""`python -m agent` is the same as the `edgeproof` command."""

from agent.cli import main

raise SystemExit(main())
