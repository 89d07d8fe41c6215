"""``python -m jaxrank.cli``: the ``jaxrank`` command."""

import sys

from jaxrank.cli.main import main

sys.exit(main())
