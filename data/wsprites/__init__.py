"""W-Sprites (Walking Sprites, SPEC §1.2): run `python -m data.wsprites.generate --help`."""
