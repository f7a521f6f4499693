"""``python -m cli`` runs the ``gpuq`` command."""

from cli.main import main

main()
