"""MTRec's published size (docs/scale.md): the default shape of the synthetic log ``coea world`` writes.

Constants only, no imports: coea/cli.py reads them while it builds the parser, for every command.
"""

MTREC = {"users": 1_450_381, "items": 27_953, "clicks": 330_722_395, "days": 25, "categories": 594}
MTREC_CLICKS_PER_USER = MTREC["clicks"] / MTREC["users"]  # 228.0
