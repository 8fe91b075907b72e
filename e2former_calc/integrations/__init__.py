"""Adapters from simulation engines to the forces/stress module: ASE, torch-sim."""
