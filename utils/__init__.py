"""Configuration, errors, and the helpers shared by the entry scripts."""
