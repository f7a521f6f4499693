"""``python -m gpuq.cli`` runs the ``gpuq`` command."""

from gpuq.cli.main import main

main()
