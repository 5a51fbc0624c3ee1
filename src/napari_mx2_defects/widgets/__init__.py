"""Dock widgets: thin Qt fronts over the Python API (one module per widget)."""
