"""``python -m dragoman.client translate|status ...``: the client commands without the server's CLI."""

import sys

from dragoman.client.cli import main

sys.exit(main())
