"""``python -m mtl.report``: the same as ``mtl-report``."""

from mtl.report.cli import main

main()
