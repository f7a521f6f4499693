"""``python -m gpuq`` runs the ``gpuq`` command."""

from gpuq.cli.main import main

main()
