"""Binary image classification at a target precision, with zero-shot anomaly flags."""

__version__ = "0.1.0"
