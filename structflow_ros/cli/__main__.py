"""`python -m structflow_ros.cli ...` is the `structflow` command."""
import sys

from structflow_ros.cli.main import main

sys.exit(main())
