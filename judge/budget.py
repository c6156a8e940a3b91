"""The one budget and the one verdict: what the quantize/fp16 loops and verify both judge with.

- ``Budget``: the bars for one precision, built from the spec's tolerances (``budget_for``; runtime.modelspec's
  ``DEFAULT_TOLERANCES`` is the only place defaults live) with explicit user overrides (``--max-drop`` ...) on top.
  A stage may tighten it (``Budget.tightened``: a guard band for parity-only models, judged on other images than
  verify's), never loosen it, so whatever the stage accepts passes verify on the same figures.
- ``reasons(figures, budget, labelled)``: every bar the figures miss, one line each (empty: passed). The figures are
  judge.figures' (a classifier's logits, or embeddings with judge.embedding's neighbour figures) or
  judge.teacher_forced's (a decoder's next tokens); each bar is checked only where its figure exists, except the
  neighbour bar: a budget that has it fails figures without it. The accuracy check
  ``accuracy_delta < -max_drop_points`` is written here and nowhere else.

**Resolution rule.** A budget must be worth at least ``MIN_FLIPS`` (2) samples on the evaluation set, so one sample
flipping never decides a verdict alone: an accuracy budget of ``max_drop_points`` on ``n`` samples needs
``n * max_drop_points / 100 >= 2``, i.e. ``n >= 200 / max_drop_points``; an agreement bar below 1 needs
``n * (1 - min_top1_agreement) >= 2``. Zero budgets (fp32: no drop, full agreement) are exact and resolve at any n.
Only labelled evaluations are concerned (parity-only models are judged on cosine and max-abs, which are not counts).
For a decoder the unit is the scored token position. The stages refuse such a budget before touching anything
(``check_resolution`` raises ``BudgetError``, naming how many samples it needs); verify fails the row with the same
words. The demo's sizes resolve: INT8 0.5 points on IMDB's 2.5k validation/test reviews is 12 samples, on
Fashion-MNIST's 5k/10k 25/50; FP16 0.1 points on 2k+ samples is >= 2; GPT-2's 16k tokens make 0.1 points 16 tokens;
the 0.99 agreement bar needs 200 samples. ``max_drop 0.5`` on 300 samples (1.5 samples) is refused: it needs 400.

Every verdict states its n and the 95 % interval of the accuracy delta (judge.interval, in the figures as
``accuracy_delta_ci95``); the bar itself is judged on the point estimate, as verify always has.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from runtime.errors import EdgeattnError
from runtime.modelspec import DEFAULT_TOLERANCES

MIN_FLIPS = 2  # samples a budget must be worth (module docstring)
EPS = 1e-9


class BudgetError(EdgeattnError, ValueError):
    """A budget the evaluation set cannot resolve, or a budget that is not a budget (a negative drop)."""


@dataclass(frozen=True)
class Budget:
    """The bars of one precision (the same names as runtime.modelspec.Tolerance, so either can be judged with)."""

    precision: str
    max_abs: float | None  # max |diff| of a sample over its reference logits' RMS; None: reported, not gated
    min_cosine: float
    min_top1_agreement: float
    max_drop_points: float  # accuracy points, the one budget unit
    cosine_on: str = "min"  # "min" over samples or "mean"
    max_ppl_increase_pct: float | None = None  # decoders: perplexity change in percent
    neighbour_k: int | None = None  # embeddings: top-k neighbours compared (judge.embedding); None: not judged
    min_neighbour_overlap: float | None = None  # embeddings: mean top-k neighbour overlap

    @classmethod
    def from_tolerance(cls, tol: Any, precision: str) -> "Budget":
        ppl = getattr(tol, "max_ppl_increase_pct", None)
        if ppl is None and precision in DEFAULT_TOLERANCES:  # specs written before the perplexity bar moved here
            ppl = DEFAULT_TOLERANCES[precision].max_ppl_increase_pct
        k, overlap = getattr(tol, "neighbour_k", None), getattr(tol, "min_neighbour_overlap", None)
        return cls(precision, tol.max_abs, float(tol.min_cosine), float(tol.min_top1_agreement),
                   float(tol.max_drop_points), getattr(tol, "cosine_on", "min"), ppl,
                   None if k is None else int(k), None if overlap is None else float(overlap))

    def overridden(self, **overrides: float | None) -> "Budget":
        """This budget with the user's explicit values (None: keep the spec's)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def tightened(self, share: float) -> "Budget":
        """The cosine bar (and the neighbour overlap bar, where there is one) moved ``share`` of the way to 1 (0.5:
        0.99 -> 0.995): a stage's guard band, stricter than verify's bar, never looser."""
        if not 0.0 <= share < 1.0:
            raise BudgetError(f"budget guard band: got {share}, expected 0 <= share < 1")
        overlap = self.min_neighbour_overlap
        return replace(self, min_cosine=self.min_cosine + share * (1.0 - self.min_cosine),
                       min_neighbour_overlap=None if overlap is None else overlap + share * (1.0 - overlap))

    def to_dict(self) -> dict[str, Any]:
        """Its bars; the neighbour ones only where set, so a classifier's budget (and every artifact key built from
        it) reads as before they existed."""
        d = asdict(self)
        for k in ("neighbour_k", "min_neighbour_overlap"):
            if d[k] is None:
                del d[k]
        return d


def budget_for(tolerances: dict[str, Any] | None, precision: str, **overrides: float | None) -> Budget:
    """The budget of ``precision`` from a spec's tolerances (None: the defaults), with ``overrides`` on top."""
    tols = tolerances or DEFAULT_TOLERANCES
    tol = tols.get(precision) or DEFAULT_TOLERANCES.get(precision)
    if tol is None:
        raise BudgetError(f"budget: got precision '{precision}', expected one of {sorted(DEFAULT_TOLERANCES)}")
    budget = Budget.from_tolerance(tol, precision).overridden(**overrides)
    if budget.max_drop_points < 0:
        raise BudgetError(f"{precision} budget: got max_drop_points {budget.max_drop_points:g}, expected >= 0 "
                          "(points of accuracy the artifact may lose)")
    return budget


# ---- resolution ----------------------------------------------------------------------------------------------
def samples_needed(budget: Budget) -> int:
    """The fewest labelled samples on which ``budget`` resolves (module docstring); 0 when any number does."""
    need = [0]
    if budget.max_drop_points > 0:
        need.append(math.ceil(100.0 * MIN_FLIPS / budget.max_drop_points - EPS))
    if budget.min_top1_agreement < 1.0:
        need.append(math.ceil(MIN_FLIPS / max(1.0 - budget.min_top1_agreement, 1e-12) - EPS))
    return max(need)


LOOP_ROWS = 1000  # a stage's labelled evaluation rows by default (:func:`loop_rows`)


def loop_rows(budget: Budget, n: int, labelled: bool, setting: int | str | None = "auto",
              floor: int = LOOP_ROWS) -> int:
    """How many of ``n`` rows a stage's budget loop judges. ``setting`` (the stage's ``--eval-samples``): a number
    (at most ``n``), "all" / None (``n``), or "auto": ``floor`` rows, or as many as ``budget`` needs to resolve when
    that is more (:func:`samples_needed`), never more than ``n``; unlabelled sets (parity, embeddings) are judged on
    all ``n`` rows, as their guard band is set by n (optimize.int8_budget.loop_budget). INT8 at 0.5 points (needs
    400) is judged on 1,000 validation rows, FP16 at 0.1 points (needs 2,000) on 2,000; verify judges every artifact
    again on the whole test split."""
    if setting is None or setting == "all":
        return n
    if setting != "auto":
        return min(n, int(setting))
    if not labelled or n <= floor:
        return n
    return min(n, max(floor, samples_needed(budget)))


def resolution_reason(budget: Budget, n: int, unit: str = "samples") -> str | None:
    """Why ``budget`` cannot be judged on ``n`` labelled ``unit``; None when it can."""
    need = samples_needed(budget)
    if n >= need:
        return None
    worth = [f"{budget.max_drop_points:g} points is {n * budget.max_drop_points / 100:.3g} {unit}"] \
        if budget.max_drop_points > 0 else []
    if budget.min_top1_agreement < 1.0:
        worth.append(f"agreement {budget.min_top1_agreement:g} allows {n * (1 - budget.min_top1_agreement):.3g}")
    return (f"{budget.precision} budget does not resolve on {n} {unit} ({'; '.join(worth)}); expected >= "
            f"{MIN_FLIPS} {unit} of budget: needs >= {need} {unit} (or a wider budget)")


def check_resolution(budget: Budget, n: int, labelled: bool, where: str, unit: str = "samples") -> None:
    """Refuse, before anything is built, a budget the stage's evaluation set (``n`` ``unit``) cannot resolve."""
    why = resolution_reason(budget, n, unit) if labelled else None
    if why:
        raise BudgetError(f"{where}: {why}")


# ---- the verdict --------------------------------------------------------------------------------------------
def scored_count(f: dict[str, Any]) -> tuple[int, str]:
    """(n, unit) a verdict is stated on: token positions for a decoder's figures, else samples."""
    return (int(f["n_tokens"]), "tokens") if "n_tokens" in f else (int(f.get("n_samples", 0)), "samples")


def reasons(f: dict[str, Any], budget: Any, labelled: bool) -> list[str]:
    """Every bar of ``budget`` (a Budget or a Tolerance) that the figures ``f`` miss; empty when they pass.
    ``labelled``: accuracy and agreement count (parity-only runs: cosine and max-abs; agreement only at 1.0)."""
    out = []
    if f.get("degenerate_reference"):
        out.append(f.get("degenerate_reason") or "degenerate reference: NaN/Inf or no signal; no verdict on it")
    if f.get("nonfinite"):
        out.append(f"{f['nonfinite']} NaN/Inf values in the output, expected none")
    max_abs = getattr(budget, "max_abs", None)
    if max_abs is not None and f.get("scaled_max_abs_diff", 0.0) > max_abs:
        out.append(f"max_abs_diff {f['max_abs_diff']:.3g} is {f['scaled_max_abs_diff']:.3g} x its sample's logit "
                   f"RMS > {max_abs:g} (RMS of all logits {f['reference_scale']:.3g})")
    stat = getattr(budget, "cosine_on", "min")
    if f.get(f"cosine_{stat}") is not None and f[f"cosine_{stat}"] < budget.min_cosine:
        out.append(f"cosine_{stat} {f[f'cosine_{stat}']:.6f} < {budget.min_cosine:g}")
    # Parity-only runs (random images through a random-init head) have near-tied logits, where top-1 flips under any
    # rounding: there top-1 agreement is reported, and gated only when exact agreement is asked for.
    agree = f.get("top1_agreement")
    if agree is not None and agree < budget.min_top1_agreement and (labelled or budget.min_top1_agreement >= 1.0):
        out.append(f"top1_agreement {agree:.4f} < {budget.min_top1_agreement:g}")
    out += neighbour_reasons(f, budget)
    out += accuracy_reasons(f, budget, labelled)
    return out


def neighbour_reasons(f: dict[str, Any], budget: Any) -> list[str]:
    """Embeddings: the mean top-k neighbour overlap bar (judge.embedding). A budget with the bar judges figures
    without it as failed, never as passed: the figures were not made for an embedding (``neighbour_k`` not asked)
    or the set has fewer than 2 samples."""
    bar = getattr(budget, "min_neighbour_overlap", None)
    if bar is None:
        return []
    got = f.get("neighbour_overlap")
    if got is None:
        return [f"neighbour_overlap missing (n {f.get('n_samples')} samples); expected the top-"
                f"{getattr(budget, 'neighbour_k', None)} neighbour figures of >= 2 embeddings"]
    if got < bar - EPS:
        return [f"neighbour_overlap@{f.get('neighbour_k')} {got:.4f} < {bar:g} (top-1 neighbour agreement "
                f"{f.get('neighbour_top1_agreement'):.4f}, n {f.get('n_samples')} samples)"]
    return []


def accuracy_reasons(f: dict[str, Any], budget: Any, labelled: bool) -> list[str]:
    """The accuracy budget (with its n and 95 % interval), the budget's resolution and, for decoders, perplexity."""
    out = []
    n, unit = scored_count(f)
    delta = f.get("accuracy_delta")
    if labelled and delta is not None:
        res = resolution_reason(budget if isinstance(budget, Budget) else Budget.from_tolerance(budget, "the"), n,
                                unit)
        if res:
            out.append(res)
        if delta < -budget.max_drop_points - EPS:
            out.append(f"accuracy_delta {delta_statement(f)} exceeds the {budget.max_drop_points:g}-point budget")
    ppl, bar = f.get("perplexity_delta_pct"), getattr(budget, "max_ppl_increase_pct", None)
    if ppl is not None and bar is not None and not ppl <= bar + EPS:
        out.append(f"perplexity {ppl:+.3f} %, budget +{bar:g} %")
    return out


def delta_statement(f: dict[str, Any]) -> str:
    """The accuracy delta as every verdict states it: ``-0.20 points (n 2490 samples, 95 % CI -0.52..+0.12)``;
    "-" without labels."""
    if f.get("accuracy_delta") is None:
        return "-"
    n, unit = scored_count(f)
    ci = f.get("accuracy_delta_ci95")
    return (f"{f['accuracy_delta']:+.2f} points (n {n} {unit}"
            + (f", 95 % CI {ci[0]:+.2f}..{ci[1]:+.2f})" if ci else ")"))


def passes(f: dict[str, Any], budget: Any, labelled: bool) -> bool:
    return not reasons(f, budget, labelled)
