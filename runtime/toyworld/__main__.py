"""`python -m runtime.toyworld OUT_DIR ...`: see runtime/toyworld/cli.py."""
import sys

from runtime.toyworld.cli import main

sys.exit(main())
