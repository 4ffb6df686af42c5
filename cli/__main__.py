"""python -m tessera.cli ARGS...  (the same as the `tessera` command)."""
import sys

from .main import main

sys.exit(main())
