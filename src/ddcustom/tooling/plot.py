"""``ddcustom plot``: a recorded history drawn as metrics over time, with thresholds and alarms.

The history is what ``ddcustom run`` writes locally (``ddcustom run > history.jsonl``): JSON lines
``{"kind": "report", "topic": ..., "report": {...}}`` and ``{"kind": "alert", "topic": ..., "alert": {...}}``.
Bare reports (``ddcustom collect --once --compact``) are taken too. Reports may use long or short names.

Two parts: ``parse_history`` (pure: lines in, time series and alarm intervals out) and ``render``, which
imports matplotlib (the ``plot`` extra) only when called and draws without pyplot, on the Agg canvas.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ddcustom.device.detect.events import UNCLEAN_STOP, ViolationEvent
from ddcustom.device.detect.profile import Profile
from ddcustom.device.metrics import CUSTOM_METRICS
from ddcustom.device.outputs.report import SHORT_NAMES

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

FORMATS = (".png", ".svg")
# report network_stats keys -> the standard metric behaviors name; values are deltas per report interval
NETWORK_STATS = {
    "bytes_in": "aws:all-bytes-in",
    "bytes_out": "aws:all-bytes-out",
    "packets_in": "aws:all-packets-in",
    "packets_out": "aws:all-packets-out",
}
ESTABLISHED = "aws:num-established-tcp-connections"
# Plot order: the catalogue's custom number metrics, then the standard ones; unknown names come last.
METRIC_ORDER = [m.name for m in CUSTOM_METRICS if m.kind == "number"] + [*NETWORK_STATS.values(), ESTABLISHED]
OPERATOR_SYMBOLS = {
    "less-than": "<",
    "less-than-equals": "≤",
    "greater-than": ">",
    "greater-than-equals": "≥",
}
TOPIC_THING = re.compile(r"\$aws/things/([^/]+)/defender/metrics/json")
# Device Defender's own violation events give epoch milliseconds, the device's engine seconds.
MILLISECONDS_ABOVE = 1e11  # as seconds this is the year 5138
# Times outside 2000..2100 are garbage, and would overflow date conversions (epoch seconds).
EARLIEST, LATEST = 946_684_800, 4_102_444_800
# how an alarm ended, as its legend says it (alarm-cleared says nothing more)
ALARM_ENDINGS = {"alarm-invalidated": ", then invalidated", "open": ", still at the end"}


class PlotError(Exception):
    """A history, an option or an output that cannot be plotted; the message says why."""


class _BadLine(Exception):
    """A history line that is neither a usable report nor a usable alert."""


@dataclass
class Series:
    metric: str
    times: list[float] = field(default_factory=list)  # epoch seconds (report_id / 1000)
    values: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Alarm:
    """One behavior in alarm, from its in-alarm event to the event that ended it."""

    behavior: str
    metric: str
    start: float  # epoch seconds
    end: float
    ended_by: str  # alarm-cleared, alarm-invalidated, or "open": still in alarm when the history ends
    start_known: bool = True  # False: cleared without an in-alarm in the history (it began before)
    value: Optional[float] = None  # the datapoint that raised it (metricValue number or count)


@dataclass
class History:
    thing: Optional[str]
    reports: int
    alerts: int
    lines: int  # non-blank lines read
    skipped: int  # lines that were neither a usable report nor a usable alert
    first_problem: str  # the first skipped line and why, for the warning
    start: float
    end: float
    series: dict[str, Series]  # in plot order
    alarms: list[Alarm]


@dataclass(frozen=True)
class Threshold:
    """A behavior's criterion on one metric: ``value`` None for a statistical threshold (not drawn)."""

    behavior: str
    operator: str
    value: Optional[float]
    statistic: Optional[str] = None
    duration_seconds: Optional[int] = None
    suppressed: bool = False

    @property
    def label(self) -> str:
        symbol = OPERATOR_SYMBOLS[self.operator]
        if self.value is None:
            text = f"{self.behavior}: normal {symbol} {self.statistic} of its own history (not drawn)"
        else:
            text = f"{self.behavior}: normal {symbol} {self.value:g}"
            if self.duration_seconds:
                text += f" summed over {self.duration_seconds} s"
        return text + (", alerts suppressed" if self.suppressed else "")


# ---- parsing (pure) ----------------------------------------------------------------------------


def parse_history(lines: Iterable[str], thing: Optional[str] = None) -> History:
    """Reports and alerts of one thing in ``lines``; other lines are counted as skipped.

    ``thing``: keep only this thing's lines; None when the history holds one thing (or none named).
    """
    reports: list[tuple[Optional[str], float, dict[str, float]]] = []
    events: list[tuple[Optional[str], float, str, str, str, Optional[float]]] = []
    read = skipped = 0
    first_problem = ""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        read += 1
        try:
            item = json.loads(line)
            if isinstance(item, dict) and item.get("kind") == "alert":
                alert = item.get("alert")
                if isinstance(alert, dict) and alert.get("eventType") == UNCLEAN_STOP:
                    continue  # the last run's unclean stop: no behavior, nothing to draw
                events.append(_alert(alert))
            elif isinstance(item, dict) and item.get("kind") == "report":
                topic = item.get("topic")
                match = TOPIC_THING.fullmatch(topic) if isinstance(topic, str) else None
                reports.append((match.group(1) if match else None, *_report(item.get("report"))))
            elif isinstance(item, dict) and ("header" in item or "hed" in item):
                reports.append((None, *_report(item)))
            else:
                raise _BadLine("not a report or an alert")
        except (ValueError, RecursionError, _BadLine) as exc:  # JSONDecodeError is a ValueError
            skipped += 1
            if not first_problem:
                reason = "not JSON" if isinstance(exc, json.JSONDecodeError) else str(exc)
                first_problem = f"line {number}: {reason}"
    things = sorted({r[0] for r in reports if r[0]} | {e[0] for e in events if e[0]})
    if thing is None and len(things) > 1:
        raise PlotError(f"the history holds several things ({', '.join(things)}): choose one with --thing")
    if thing is not None:
        if thing not in things:
            raise PlotError(
                f"no lines of thing {thing!r} in the history (things in it: {', '.join(things) or 'none'})"
            )
        reports = [r for r in reports if r[0] == thing]
        events = [e for e in events if e[0] == thing]
    times = [r[1] for r in reports] + [e[1] for e in events]
    start, end = (min(times), max(times)) if times else (0.0, 0.0)
    return History(
        thing=thing or (things[0] if things else None),
        reports=len(reports),
        alerts=len(events),
        lines=read,
        skipped=skipped,
        first_problem=first_problem,
        start=start,
        end=end,
        series=_series(sorted((r[1], r[2]) for r in reports)),
        alarms=_alarms(sorted((e[1:] for e in events), key=lambda e: e[0]), start, end),
    )


def _get(mapping: dict[str, Any], long_name: str) -> Any:
    """A report key by its long name or its short name."""
    return mapping[long_name] if long_name in mapping else mapping.get(SHORT_NAMES[long_name])


def _number(value: Any) -> Optional[float]:
    """``value`` as a float when it is a finite JSON number (not a boolean), else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _report(report: Any) -> tuple[float, dict[str, float]]:
    """(time in epoch seconds, numeric metric values) of one report."""
    if not isinstance(report, dict):
        raise _BadLine("the report is not an object")
    header = _get(report, "header")
    report_id = _get(header, "report_id") if isinstance(header, dict) else None
    if not isinstance(report_id, int) or isinstance(report_id, bool) or report_id <= 0:
        raise _BadLine("the report has no header with a report_id")
    if not EARLIEST * 1000 <= report_id <= LATEST * 1000:
        raise _BadLine("the report_id is not a time (epoch milliseconds) between 2000 and 2100")
    custom, metrics = _get(report, "custom_metrics"), _get(report, "metrics")
    if not isinstance(custom, (dict, type(None))) or not isinstance(metrics, (dict, type(None))):
        raise _BadLine("the report's metrics are not objects")
    values: dict[str, float] = {}
    for name, entry in (custom or {}).items():  # [{"number": 85}]; list kinds are not plotted
        if isinstance(entry, list) and entry and isinstance(entry[0], dict):
            number = _number(entry[0].get("number"))
            if number is not None:
                values[name] = number
    if metrics is not None:
        stats = _get(metrics, "network_stats")
        if isinstance(stats, dict):
            for key, metric in NETWORK_STATS.items():
                count = _number(_get(stats, key))
                if count is not None:
                    values[metric] = count
        tcp = _get(metrics, "tcp_connections")
        if tcp is None:  # the report leaves the section out when no connection is established
            values[ESTABLISHED] = 0.0
        elif isinstance(tcp, dict) and isinstance(_get(tcp, "established_connections"), dict):
            total = _number(_get(_get(tcp, "established_connections"), "total"))
            if total is not None:
                values[ESTABLISHED] = total
    return report_id / 1000, values


def _alert(data: Any) -> tuple[Optional[str], float, str, str, str, Optional[float]]:
    """(thing, time in epoch seconds, event type, behavior name, metric, datapoint) of one alert."""
    try:
        alert = ViolationEvent.from_json(data)
    except ValueError as exc:
        raise _BadLine(str(exc)) from None
    metric = alert.behavior.get("metric")
    if not alert.behavior_name or not isinstance(metric, str):
        raise _BadLine("the alert's behavior has no name or metric")
    criteria = alert.behavior.get("criteria")
    value: Optional[float] = None
    # a durationSeconds datapoint is a sum over that window: not comparable with the reported values
    if not (isinstance(criteria, dict) and "durationSeconds" in criteria):
        value = _number(alert.metric_value.get("number", alert.metric_value.get("count")))
    when = alert.event_time
    seconds = when / 1000 if when > MILLISECONDS_ABOVE else when
    if not EARLIEST <= seconds <= LATEST:
        raise _BadLine("the alert's violationEventTime is not a time between 2000 and 2100")
    return alert.thing_name, seconds, alert.event_type, alert.behavior_name, metric, value


def _series(reports: Sequence[tuple[float, dict[str, float]]]) -> dict[str, Series]:
    found: dict[str, Series] = {}
    for when, values in reports:
        for metric, value in values.items():
            series = found.setdefault(metric, Series(metric))
            series.times.append(when)
            series.values.append(value)
    rank = {metric: index for index, metric in enumerate(METRIC_ORDER)}
    return {metric: found[metric] for metric in sorted(found, key=lambda m: (rank.get(m, len(rank)), m))}


def _alarms(
    events: Iterable[tuple[float, str, str, str, Optional[float]]], start: float, end: float
) -> list[Alarm]:
    """Alarm intervals per behavior; one still open at the end of the history runs to its end."""
    alarms: list[Alarm] = []
    open_alarms: dict[str, tuple[float, str, Optional[float]]] = {}
    for when, kind, name, metric, value in events:
        if kind == "in-alarm":
            open_alarms.setdefault(name, (when, metric, value))  # a repeat (a restarted run) continues it
            continue
        if name in open_alarms:
            since, metric, raised_by = open_alarms.pop(name)
            alarms.append(Alarm(name, metric, since, when, kind, value=raised_by))
        else:  # in alarm since before the history began
            alarms.append(Alarm(name, metric, start, when, kind, start_known=False))
    for name, (since, metric, raised_by) in open_alarms.items():
        alarms.append(Alarm(name, metric, since, end, "open", value=raised_by))
    return sorted(alarms, key=lambda a: (a.start, a.behavior))


def thresholds(profile: Profile) -> dict[str, list[Threshold]]:
    """The profile's numeric criteria by metric; set criteria (in-set, cidrs, ports) have no line."""
    found: dict[str, list[Threshold]] = {}
    for behavior in profile.device_behaviors:
        criteria = behavior.criteria
        if criteria is None or criteria.comparison_operator not in OPERATOR_SYMBOLS:
            continue
        found.setdefault(behavior.metric, []).append(
            Threshold(
                behavior.name,
                criteria.comparison_operator,
                criteria.threshold,
                criteria.statistic,
                criteria.duration_seconds,
                behavior.suppress_alerts,
            )
        )
    return found


def choose_metrics(history: History, wanted: Optional[str]) -> list[str]:
    """The metrics to plot: ``wanted`` ("a,b", in that order) or every numeric metric in the history."""
    if not history.reports:
        raise PlotError(
            f"no reports in the history ({history.lines} lines, {history.skipped} skipped"
            + (f", first: {history.first_problem}" if history.first_problem else "")
            + "); record one with: ddcustom run --config F > history.jsonl"
        )
    if not history.series:
        raise PlotError(f"none of the {history.reports} reports holds a numeric metric")
    if wanted is None:
        return list(history.series)
    names = [name.strip() for name in wanted.split(",") if name.strip()]
    unknown = [name for name in names if name not in history.series]
    if unknown or not names:
        raise PlotError(
            f"unknown metric(s) in --metrics: {', '.join(unknown) or repr(wanted)}; "
            f"the history has: {', '.join(history.series)}"
        )
    return list(dict.fromkeys(names))


# ---- rendering ---------------------------------------------------------------------------------


def render(history: History, profile: Profile, metrics: Sequence[str], output: str) -> None:
    """Draw ``metrics`` (see ``draw``) and write the figure to ``output``, PNG or SVG by its extension."""
    suffix = Path(output).suffix.lower()
    if suffix not in FORMATS:
        raise PlotError(f"output {output!r} must end in .png or .svg")
    figure = draw(history, profile, metrics)
    try:
        figure.savefig(output, format=suffix[1:], dpi=100)
    except OSError as exc:
        raise PlotError(f"cannot write {output!r}: {exc.strerror or exc}") from None


def draw(history: History, profile: Profile, metrics: Sequence[str]) -> Figure:
    """One subplot per metric on a shared local-time axis: the reported values, the profile's
    thresholds on that metric, its behaviors' alarm periods shaded. No pyplot: nothing global."""
    try:
        from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotError(
            "matplotlib is not installed: pip install matplotlib "
            "(in the ddcustom repository: pip install '.[plot]')"
        ) from None

    def local(seconds: float) -> datetime:
        # naive local wall-clock times: matplotlib shows them as they are, DST included
        return datetime.fromtimestamp(seconds)

    limits = thresholds(profile)
    figure = Figure(figsize=(13, 1.2 + 2.2 * len(metrics)), constrained_layout=True)
    axes = figure.subplots(len(metrics), 1, sharex=True, squeeze=False)[:, 0]
    for ax, metric in zip(axes, metrics):
        series = history.series[metric]
        per_interval = " (per report interval)" if metric in NETWORK_STATS.values() else ""
        ax.set_title(metric + per_interval, loc="left", fontsize=9)
        ax.plot([local(t) for t in series.times], series.values, marker=".", markersize=4, linewidth=1)
        low, high = min(series.values), max(series.values)
        # how far from the values a line is still drawn; values all 0 squash into nothing: always drawn
        reach = 3 * max(high - low, abs(low), abs(high))
        for limit in limits.get(metric, []):
            if limit.value is None:
                ax.plot([], [], " ", label=limit.label)  # a legend entry only
            elif reach > 0 and not low - reach <= limit.value <= high + reach:
                # drawn, it would squash the values into a line: say where it is instead
                side = "above" if limit.value > high else "below"
                ax.plot([], [], " ", label=f"{limit.label} (far {side} the values, not drawn)")
            else:
                ax.axhline(limit.value, color="tab:orange", linestyle="--", linewidth=1, label=limit.label)
        for alarm in (a for a in history.alarms if a.metric == metric):
            since = "" if alarm.start_known else " (since before the history)"
            label = f"in alarm: {alarm.behavior}{since}{ALARM_ENDINGS.get(alarm.ended_by, '')}"
            color = "tab:gray" if alarm.ended_by == "alarm-invalidated" else "tab:red"
            ax.axvspan(local(alarm.start), local(alarm.end), color=color, alpha=0.18, label=label)
            if alarm.start_known and alarm.value is not None:
                ax.plot(
                    [local(alarm.start)],
                    [alarm.value],
                    "x",
                    color="tab:red",
                    label="datapoint raising an alarm",
                )
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))  # one entry per label
        if unique:
            ax.legend(unique.values(), unique.keys(), loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7)
        ax.grid(True, alpha=0.3)
    if history.start == history.end:  # one moment: a minute either side, not matplotlib's years
        axes[-1].set_xlim(local(history.start - 60), local(history.end + 60))
    locator = AutoDateLocator()
    axes[-1].xaxis.set_major_locator(locator)
    axes[-1].xaxis.set_major_formatter(ConciseDateFormatter(locator))
    axes[-1].set_xlabel(f"local time ({datetime.now().astimezone().strftime('%Z, UTC%z')})")
    title = (
        f"{history.thing or 'unnamed thing'}: {history.reports} reports, {len(history.alarms)} alarms, "
        f"{local(history.start):%Y-%m-%d %H:%M} to {local(history.end):%Y-%m-%d %H:%M}; "
        f"thresholds of security profile {profile.name!r}"
    )
    hidden = sorted({f"{a.behavior} ({a.metric})" for a in history.alarms if a.metric not in metrics})
    if hidden:
        title += f"\nalarms on metrics not shown: {', '.join(hidden)}"
    figure.suptitle(title, fontsize=10)
    return figure


def plot_history(
    path: str, output: str, profile: Profile, metrics: Optional[str] = None, thing: Optional[str] = None
) -> str:
    """Read the history at ``path``, draw it to ``output``; return a one-line summary."""
    if Path(output).suffix.lower() not in FORMATS:
        raise PlotError(f"output {output!r} must end in .png or .svg")
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            history = parse_history(f, thing)
    except OSError as exc:
        raise PlotError(f"cannot read history {path!r}: {exc.strerror or exc}") from None
    chosen = choose_metrics(history, metrics)
    if history.skipped:
        log.warning(
            "skipped %d of %d lines of %s that are not reports or alerts (first: %s)",
            history.skipped,
            history.lines,
            path,
            history.first_problem,
        )
    render(history, profile, chosen, output)
    return f"wrote {output}: {len(chosen)} metrics, {history.reports} reports, {len(history.alarms)} alarms"
