"""The verify row: one artifact on one backend in one mode, judged; what verify.json holds and bench, serve and the
report read back. Fields, never strings to parse: the mode that ran is ``mode``; when it is not the one planned
(ONNX Runtime crashed at 'all' and 'extended' ran), the planned one is ``mode_asked`` and why is ``fallback_reason``.

verify.json stays a list of flat objects (the figures of judge.figures beside the row's own fields), so
``VerifyRow.to_dict`` flattens ``figures`` and leaves out optional fields that are None; ``VerifyRow.from_dict`` reads
any row back, also those written before the fields existed (mode ``"extended (all: <why>)"``).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

# written only when set (None: absent from verify.json, as before the schema had them)
OPTIONAL = ("mode_asked", "fallback_reason", "role", "judged_as", "dataset", "seconds", "cpu_isa",
            "execution_provider", "precision_ran", "precision_asked", "n_samples", "error", "budget_points",
            "verify_key", "first_divergence")


@dataclass
class VerifyRow:
    model: str
    artifact: str = "-"
    precision: str = "-"
    backend: str = "-"
    mode: str = "-"  # the mode that ran (ONNX Runtime level, OpenVINO hint, "engine")
    mode_asked: str | None = None  # the planned mode, when another one ran
    fallback_reason: str | None = None  # why the planned mode did not run
    role: str | None = None
    gating: bool = True
    judged_as: str | None = None
    dataset: str | None = None
    seconds: float | None = None
    cpu_isa: str | None = None
    execution_provider: str | None = None
    precision_ran: str | None = None
    precision_asked: str | None = None
    n_samples: int | None = None
    passed: bool = False
    error: str | None = None
    reasons: list[str] = field(default_factory=list)
    budget_points: float | None = None
    verify_key: str | None = None
    first_divergence: dict[str, Any] | None = None
    figures: dict[str, Any] = field(default_factory=dict)  # judge.figures' figures and any other measured value

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "figures":
                out.update({k: x for k, x in v.items() if k not in out})
            elif not (f.name in OPTIONAL and v is None):
                out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VerifyRow":
        """A verify.json row, of this schema or an older one, as a VerifyRow."""
        names = {f.name for f in fields(cls)} - {"figures"}
        known = {k: v for k, v in d.items() if k in names}
        row = cls(**{"model": str(d.get("model", "-")), **known},
                  figures={k: v for k, v in d.items() if k not in names})
        if row.mode_asked is None:
            ran, asked, why = split_mode(row.mode)
            row.mode, row.mode_asked, row.fallback_reason = ran, asked, row.fallback_reason or why
        return row


def split_mode(mode: Any) -> tuple[str, str | None, str | None]:
    """(mode that ran, mode planned or None, why or None) of a mode as older verify.json files wrote it:
    ``"extended (all: worker killed by SIGSEGV)"`` -> ("extended", "all", "worker killed by SIGSEGV")."""
    text = str(mode or "")
    ran, _, rest = text.partition(" (")
    if not rest.endswith(")"):
        return ran or text, None, None
    asked, _, why = rest[:-1].partition(": ")
    return ran, asked or None, why or None
