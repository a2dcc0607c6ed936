"""Dataset parsers (one per family), reference sampling, anomaly simulation and image loading."""
from gadlib.data.schema import COLUMNS, make_frame, validate_frame

__all__ = ["COLUMNS", "make_frame", "validate_frame"]
