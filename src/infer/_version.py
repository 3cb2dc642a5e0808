"""The version of infer, written here only (pyproject.toml reads it; `infer.__version__`)."""

__version__ = "0.1.0"
