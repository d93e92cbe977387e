"""`python -m core.eval ...`: evaluate checkpoints on a manifest (core.eval.evaluate)."""
import sys

from .evaluate import main

sys.exit(main())
