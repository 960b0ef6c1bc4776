"""``python -m dragoman.agent``: the same as ``dragoman node``, usable before the subcommand is wired in."""

import sys

from dragoman.agent.cli import main

sys.exit(main())
