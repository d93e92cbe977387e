"""`python -m core.train ...` (or `torchrun ... -m core.train ...`): the trainer's command line."""
import sys

from .trainer import main

sys.exit(main())
