"""gadlib: a reproducible study kit for generalist anomaly detection (GAD)."""
__version__ = "0.1.0"
