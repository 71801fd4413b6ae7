"""The GLASS networks (SPEC §2–3): building blocks, GMA, LMA, the full model and its generation API."""
