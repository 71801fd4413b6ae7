"""Video data: the on-disk format, datasets and batching, converters, and the W-Sprites generator."""
