"""GPU benchmarks of the kernels beside their peers: ``python -m kernels.bench {lightning,gla}``."""
