"""Audio competition pipeline: YAML queue -> features -> folds -> models -> OOF/test predictions -> blend."""

__version__ = "0.1.0"
