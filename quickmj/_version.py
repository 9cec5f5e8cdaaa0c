__version__ = "0.1.0"
"""The installed quickmj version (PEP 440)."""
