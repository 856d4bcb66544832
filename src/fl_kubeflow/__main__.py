"""Allow ``python -m fl_kubeflow``."""

from fl_kubeflow.cli import main

raise SystemExit(main())
