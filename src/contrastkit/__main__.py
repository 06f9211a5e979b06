"""``python -m contrastkit`` (and ``torchrun -m contrastkit``): the command line."""

from contrastkit.cli import main

raise SystemExit(main())
