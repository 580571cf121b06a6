"""`python -m autoretrain.cli`: the `autoretrain` command."""

from autoretrain.cli import main

raise SystemExit(main())
