"""Run the command line: `python -m rlhf_core --help`."""

from rlhf_core.cli import main

raise SystemExit(main())
