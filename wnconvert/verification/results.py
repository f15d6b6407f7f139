"""The report model: what ran, on which inputs, and every comparison."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .compare import ArrayComparison, ErrorStats, describe, stat_label
from .tolerance import RULE, WeightsMode

#: An output whose reference peaks within this factor of atol gets a warning: a 100 % relative
#: error there could still pass.
WEAK_FACTOR = 10.0


@dataclass(frozen=True)
class CaseInfo:
    """One set of inputs every provider and the reference ran on."""

    label: str
    source: Literal["random", "file"]
    inputs: Mapping[str, tuple[tuple[int, ...], str]]  # name -> (shape, dtype)
    seed: tuple[int, int] | None = None  # (seed, draw) for random data


@dataclass(frozen=True)
class OutputResult:
    """One output on one provider, over every case."""

    name: str
    reference_name: str
    cases: tuple[tuple[str, ArrayComparison], ...]  # (case label, comparison)

    @property
    def passed(self) -> bool:
        return all(comp.passed for _, comp in self.cases)

    @property
    def first(self) -> ArrayComparison:
        return self.cases[0][1]

    @property
    def max_abs(self) -> float:
        return max(comp.max_abs for _, comp in self.cases)

    @property
    def max_rel(self) -> float:
        return max(comp.max_rel for _, comp in self.cases)

    @property
    def mean_abs(self) -> float:
        total = sum(comp.size for _, comp in self.cases)
        if not total:
            return 0.0
        return sum(comp.mean_abs * comp.size for _, comp in self.cases) / total

    @property
    def min_atol(self) -> float:
        return max(comp.min_atol for _, comp in self.cases)

    @property
    def mismatched(self) -> int:
        return sum(comp.mismatched for _, comp in self.cases)

    @property
    def ref_max_abs(self) -> float:
        return max(comp.ref_max_abs for _, comp in self.cases)

    @property
    def min_rtol(self) -> float:
        return max(comp.min_rtol for _, comp in self.cases)

    @property
    def failed_rules(self) -> tuple[str, ...]:
        """The rules that failed in any case (the statistic checked, ``min_snr``)."""
        return tuple(dict.fromkeys(rule for _, comp in self.cases for rule in comp.failed_rules))

    def rule_summary(self) -> str:
        """``check elemwise``, ``check p99``, with ``, min_snr 60 dB`` when set."""
        rule = self.first.rule
        text = f"check {stat_label(rule.stat, rule.quantile)}"
        if rule.min_snr is not None:
            text += f", min_snr {rule.min_snr:g} dB"
        return text

    @property
    def stats(self) -> ErrorStats | None:
        """The error budget over every case (runs, sizes): the largest of each statistic and the
        smallest SNR, so each figure is the tolerance that would pass every case on its own
        (each case has its own in :attr:`cases`)."""
        all_stats = [comp.stats for _, comp in self.cases if comp.stats is not None]
        if not all_stats:
            return None
        if len(all_stats) == 1:
            return all_stats[0]
        worst = {name: max(getattr(s, name) for s in all_stats)
                 for name in ErrorStats.__dataclass_fields__
                 if name.startswith(("abs_", "rel_"))}
        snrs = [s.snr_db for s in all_stats]
        return ErrorStats(quantile=all_stats[0].quantile, **worst,
                          snr_db=math.nan if any(map(math.isnan, snrs)) else min(snrs),
                          finite=sum(s.finite for s in all_stats))

    @property
    def elements(self) -> int:
        return sum(comp.size for _, comp in self.cases)

    def weak_tolerance(self) -> str | None:
        """A warning when atol is so large next to the reference that the check is weak."""
        first = self.first
        peak = self.ref_max_abs
        if first.atol <= 0 or peak > WEAK_FACTOR * first.atol or not self.elements:
            return None
        suggest = f"atol <= {peak / 100:.2g}" if peak > 0 else "a smaller atol"
        return (f"output {self.name!r}: the reference peaks at {peak:.3g}, within "
                f"{WEAK_FACTOR:g}x of atol {first.atol:g}, so a 100% error could pass; "
                f"{suggest} (1% of the peak) would make the check meaningful")

    @property
    def worst_case(self) -> tuple[str, ArrayComparison]:
        """The case whose check failed worst (or the first one when all pass)."""
        failing = [item for item in self.cases if not item[1].passed]
        if not failing:
            return self.cases[0]
        return max(failing, key=lambda item: (item[1].message is not None, item[1].min_atol))


@dataclass(frozen=True)
class ProviderResult:
    """Every output on one ONNX Runtime execution provider.

    ``options``: what ONNX Runtime applied (``get_provider_options()``), or what was asked when
    no session came up. ``tf32``: a sentence on the TF32 state it ran with. ``messages``: what
    ONNX Runtime printed while the session was created or ran (never on our stdout).
    """

    name: str  # as ONNX Runtime spells it
    options: Mapping[str, str]
    notes: tuple[str, ...]
    outputs: tuple[OutputResult, ...]
    error: str | None = None  # the session failed to load or run
    tf32: str | None = None
    messages: tuple[str, ...] = ()
    chain: tuple[str, ...] = ()  # the providers the session was created with, in order

    @property
    def passed(self) -> bool:
        return (self.error is None and bool(self.outputs)
                and all(out.passed for out in self.outputs)
                and sum(out.elements for out in self.outputs) > 0)


@dataclass(frozen=True)
class WeightComparison:
    name: str
    shape: tuple[int, ...]
    dtype: str
    max_abs: float
    max_rel: float
    atol: float
    rtol: float
    passed: bool
    reference_name: str | None = None  # when matched through a prefix or by value


@dataclass(frozen=True)
class WeightsReport:
    """Weights compared (checkpoint tensor or reference initializer vs candidate).

    Matched by name, by name after a common prefix is stripped/added (``prefix``), or by value
    for initializers the exporter renamed (``matched_by_value``). Initializers marked as
    derived by the exporter are listed in ``derived`` and not compared.
    """

    mode: WeightsMode
    compared: tuple[WeightComparison, ...]
    skipped: tuple[tuple[str, str], ...]  # (name, why) for same name but another shape
    only_in_candidate: tuple[str, ...]
    only_in_reference: tuple[str, ...]
    prefix: tuple[str, str] | None = None  # (strip from candidate, add) that made names match
    matched_by_value: tuple[tuple[str, str], ...] = ()  # (candidate, reference) names
    # (candidate, note): initializers the exporter derived from several parameters (a BatchNorm
    # folded into a convolution), so no reference tensor is theirs: not compared
    derived: tuple[tuple[str, str], ...] = ()

    @property
    def failed(self) -> tuple[WeightComparison, ...]:
        return tuple(w for w in self.compared if not w.passed)

    @property
    def nothing_matched(self) -> bool:
        """The reference has weights but none was compared: the weight check saw nothing."""
        return not self.compared and bool(self.only_in_reference or self.skipped)

    @property
    def passed(self) -> bool:
        return self.mode != "fail" or not (self.failed or self.nothing_matched)

    @property
    def worst(self) -> WeightComparison | None:
        if not self.compared:
            return None
        return max(self.compared, key=lambda w: (not w.passed, w.max_abs))

    def nothing_matched_reason(self) -> str:
        names = ", ".join(self.only_in_reference[:5])
        more = f" and {len(self.only_in_reference) - 5} more" if len(self.only_in_reference) > 5 \
            else ""
        return (f"weights: none of the {len(self.only_in_reference) + len(self.skipped)} "
                f"reference tensors matched an initializer by name, prefix or value (unmatched: "
                f"{names}{more}); export with the parameter names kept, or compare outputs only "
                "with the weights check set to 'report' or 'off'")


@dataclass
class VerificationReport:
    """The whole verification: what ran, on which inputs, and every comparison."""

    candidate: dict[str, Any]
    reference: dict[str, Any]
    cases: tuple[CaseInfo, ...]
    providers: tuple[ProviderResult, ...]
    weights: WeightsReport | None
    output_matching: Literal["name", "position"] = "name"
    notes: tuple[str, ...] = ()
    rule: str = RULE
    skipped: tuple[tuple[str, str], ...] = ()  # (provider, why it could not start here)
    reports_written: list[Path] = field(default_factory=list)  # the report files written

    @property
    def passed(self) -> bool:
        weights_ok = self.weights is None or self.weights.passed
        return bool(self.providers) and weights_ok and all(p.passed for p in self.providers)

    def failures(self) -> list[str]:
        """One line per failed check, naming the provider and output (or weight)."""
        lines: list[str] = []
        for provider in self.providers:
            if provider.error:
                lines.append(f"{provider.name}: {provider.error}")
                continue
            for out in provider.outputs:
                if out.passed:
                    continue
                label, comp = out.worst_case
                lines.append(f"{provider.name}: output {out.name!r} ({label}): {describe(comp)}")
            if not provider.outputs or not sum(out.elements for out in provider.outputs):
                lines.append(f"{provider.name}: no output element was compared; a check that "
                             "compared nothing does not pass")
        if self.weights is not None and self.weights.mode == "fail":
            for w in self.weights.failed:
                lines.append(
                    f"weight {w.name!r} differs: max_abs {w.max_abs:.3g} > atol {w.atol:g} + "
                    f"rtol {w.rtol:g} * |ref|"
                )
            if self.weights.nothing_matched:
                lines.append(self.weights.nothing_matched_reason())
        return lines

    def warnings(self) -> list[str]:
        """Things that make the verdict weaker than it looks (one line each)."""
        lines: list[str] = []
        for provider in self.providers:
            for out in provider.outputs:
                weak = out.weak_tolerance()
                if weak:
                    lines.append(f"{provider.name}: {weak}")
            lines.extend(f"{provider.name}: ONNX Runtime printed: {m}" for m in provider.messages)
        if self.weights is not None and self.weights.mode != "fail" \
                and self.weights.nothing_matched:
            lines.append(self.weights.nothing_matched_reason())
        return lines

    def to_dict(self) -> dict[str, Any]:
        """The JSON report (schema ``wnconvert.verify/1``, documented in docs/export_verify.md)."""
        from .report import report_dict

        return report_dict(self)
