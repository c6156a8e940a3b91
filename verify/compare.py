"""Moved: the figures and the comparison live in judge.figures (the judge, floor 2), the verdict in judge.budget.
Kept so existing imports of ``verify.compare`` still work; new code imports from judge/."""
from judge.figures import (Comparison, compare, compare_outputs, cosine_rows, degenerate_reason,  # noqa: F401
                           figures, reference_figures, scaled_max_abs, spread_floor)
