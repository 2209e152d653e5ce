"""``python -m agent``: same as the ``nodemedic`` console script (agent.cli.main)."""

from agent.cli import main

raise SystemExit(main())
