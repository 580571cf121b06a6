"""autoretrain: retraining that happens by itself when new data lands."""

__version__ = "0.1.0"
