"""Sample-quality measures."""
