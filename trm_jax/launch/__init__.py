"""Launching a sweep's runs: on this machine (local), on cloud TPU / GPU VMs through SkyPilot,
on a SLURM cluster through submitit. `python -m trm_jax.launch --help`; the choice of
launchers: BUILD_NOTES.md, "Sweeps and launchers"."""
