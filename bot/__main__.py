"""``python -m bot`` runs the ``sneakerbot`` command."""

import sys

from bot.cli import main

sys.exit(main())
