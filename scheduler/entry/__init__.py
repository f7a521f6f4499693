"""Entry points: ``gpuq server`` (migrate, bootstrap, serve) and ``gpuq up``'s local
provisioning. The CLI reaches the scheduler only through these."""
