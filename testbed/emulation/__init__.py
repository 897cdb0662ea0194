"""Running an emulation: the runner, the Mininet network and its clean-up, link emulation
(HTB, netem, the NFQUEUE delay line, fidelity probes), CPU pinning and captures."""
