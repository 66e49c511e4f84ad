"""A chapter's full-mode targets and the verdict on each (book/design.md, "Results JSON").

Each chapter keeps its targets in ``notebooks/<chapter>.toml``, one entry per metric:

    [targets]
    "w2sq_euler1_otcfm_8gaussians-moons" = ["<=", 0.15]            # a bound on a figure
    "bpd_ddpm_bound" = {op = "<", threshold = "bpd_independent_pixels",
                        spread = ["bpd_ddpm_bound_se"], times = 2}  # a direction
    "nll_2d_diff_subvp_minus_vp" = {op = "<", threshold = 0.0, spread = ["..._std"],
                                    times = 1.155, known_miss = "why it is missed"}

``threshold`` is a number or the name of another recorded metric. A target on a direction
(a difference against 0, one figure against another) names the recorded metrics that make its
``spread``: they add in quadrature, and the target counts as met only when the value clears the
threshold by ``times`` spreads (``value + times * spread < threshold`` for ``<``/``<=``, minus for
``>``/``>=``): a difference inside its error bars is not a finding. ``times`` turns the named
spread into the margin wanted, e.g. 2 standard errors from a std over 3 seeds is ``2 / sqrt(3)``.

``known_miss`` documents a target the committed results miss, with the reason: ``make check``
reports it in its table and still passes; an undocumented miss fails it.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from pathlib import Path

OPERATORS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}
_KEYS = {"op", "threshold", "spread", "times", "known_miss"}


@dataclass(frozen=True)
class Target:
    """One target: ``metric op threshold``, cleared by ``times`` x the quadrature ``spread``."""

    metric: str
    op: str
    threshold: float | str
    spread: tuple[str, ...] = ()
    times: float = 1.0
    known_miss: str = ""

    def text(self) -> str:
        """``< 0.15``, ``< bpd_pixels by 2 x spread(bpd_se)``."""
        thr = f"{self.threshold:g}" if isinstance(self.threshold, float) else f"`{self.threshold}`"
        if not self.spread:
            return f"{self.op} {thr}"
        return f"{self.op} {thr} by {self.times:g} x spread({', '.join(self.spread)})"


@dataclass(frozen=True)
class Verdict:
    """A target judged on recorded metrics: the value, its margin, met or missed (and why)."""

    target: Target
    value: float | None
    threshold: float | None
    spread: float = 0.0
    met: bool = False
    missing: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        """``met``, ``missed``, ``missed (documented)``, or ``missing`` (a metric absent)."""
        if self.missing:
            return "missing"
        if self.met:
            return "met"
        return "missed (documented)" if self.target.known_miss else "missed"


def parse_target(metric: str, entry, where: str = "") -> Target:
    """A ``[op, number]`` list or an inline table (module docstring) as a ``Target``.

    Raises ValueError naming ``where`` (the file) for an unknown operator, key or a bad type."""
    def bad(why):
        return ValueError(f"{where}: target {metric!r} {why}; got {entry!r} (an entry is [operator, "
                          f"number] or a table of {sorted(_KEYS)}; operators: {sorted(OPERATORS)})")
    if isinstance(entry, list):
        if len(entry) != 2:
            raise bad("must be [operator, number]")
        entry = {"op": entry[0], "threshold": entry[1]}
    if not isinstance(entry, dict):
        raise bad("must be a list or a table")
    if set(entry) - _KEYS:
        raise bad(f"has unknown keys {sorted(set(entry) - _KEYS)}")
    op, threshold = entry.get("op"), entry.get("threshold")
    if op not in OPERATORS:
        raise bad(f"has operator {op!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, str)):
        raise bad("needs a threshold: a number or a metric name")
    spread = entry.get("spread", [])
    spread = [spread] if isinstance(spread, str) else spread
    times = entry.get("times", 2.0 if spread else 1.0)
    if not (isinstance(spread, list) and all(isinstance(s, str) for s in spread)) \
            or not isinstance(times, (int, float)) or times < 0:
        raise bad("needs spread = [metric names] and times >= 0")
    threshold = threshold if isinstance(threshold, str) else float(threshold)
    return Target(metric, op, threshold, tuple(spread), float(times),
                  str(entry.get("known_miss", "")))


def judge(target: Target, metrics: dict) -> Verdict:
    """The verdict on ``target`` from a results file's ``metrics`` ({name: {value, ...}})."""
    names = [target.metric, *target.spread]
    if isinstance(target.threshold, str):
        names.append(target.threshold)
    missing = [n for n in names if n not in metrics]
    if missing:
        return Verdict(target, None, None, missing=missing)
    value = metrics[target.metric]["value"]
    threshold = metrics[target.threshold]["value"] if isinstance(target.threshold, str) \
        else target.threshold
    spread = math.sqrt(sum(metrics[s]["value"] ** 2 for s in target.spread))
    toward = 1.0 if target.op in ("<", "<=") else -1.0  # the value moved toward the threshold
    met = OPERATORS[target.op](value + toward * target.times * spread, threshold)
    return Verdict(target, value, threshold, spread, met)


def read_targets(path: Path) -> tuple[list[Target], list[str]]:
    """The targets and headline metric names of a chapter file (no file: none)."""
    import tomllib

    if not path.is_file():
        return [], []
    data = tomllib.loads(path.read_text())
    targets = [parse_target(name, entry, str(path))
               for name, entry in data.get("targets", {}).items()]
    return targets, list(data.get("headline", []))


@dataclass
class ChapterSpec:
    """A chapter's own data, ``notebooks/<chapter>.toml``: its targets and the README's
    headline metrics."""

    targets: list[Target]
    headline: list[str]


def chapter_spec(chapter: str, root: Path | None = None) -> ChapterSpec:
    """Read ``notebooks/<chapter>.toml`` (no file: no targets, every metric a headline)."""
    from minigen.workbook.record import repo_root

    return ChapterSpec(*read_targets((root or repo_root()) / "notebooks" / f"{chapter}.toml"))


def chapter_verdicts(chapter: str, results: Path, root: Path | None = None) -> list[Verdict]:
    """Every target of ``chapter`` judged on ``results/<chapter>.json`` (absent: all missing)."""
    import json

    path = results / f"{chapter}.json"
    metrics = json.loads(path.read_text())["metrics"] if path.is_file() else {}
    return [judge(t, metrics) for t in chapter_spec(chapter, root).targets]


def verdict_table(rows: list[tuple[str, Verdict]]) -> str:
    """Markdown table ``chapter | metric | value | target | margin | status`` (the margin is the
    distance to the threshold after the spread: positive when met)."""
    from minigen.workbook.record import format_value

    lines = ["| chapter | metric | value | target | margin | status |",
             "|---|---|---:|---|---:|---|"]
    for chapter, v in rows:
        t = v.target
        if v.missing:
            lines.append(f"| {chapter} | `{t.metric}` | – | {t.text()} | – | **missing**: "
                         f"{', '.join(v.missing)} |")
            continue
        toward = 1.0 if t.op in ("<", "<=") else -1.0
        margin = toward * (v.threshold - v.value) - t.times * v.spread + 0.0  # no "-0"
        status = "met" if v.met else f"**{v.status}**"
        if t.known_miss and not v.met:
            status += f": {t.known_miss}"
        lines.append(f"| {chapter} | `{t.metric}` | {format_value(v.value)} | {t.text()} "
                     f"| {format_value(margin)} | {status} |")
    if len(lines) == 2:
        lines.append("| – | – | – | – | – | – |")
    return "\n".join(lines)
