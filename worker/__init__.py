"""gpuq worker: the per-host daemon, GPU backends and the job supervisor."""
