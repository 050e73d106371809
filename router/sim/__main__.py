"""`python -m router.sim`: run the simulated backend on its own (the benchmark's upstream)."""

from router.sim.backend import main

main()
