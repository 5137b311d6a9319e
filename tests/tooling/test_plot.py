"""``ddcustom plot``: histories recorded by the real report builder, engine and JSON lines sink."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from matplotlib.axes import Axes

from ddcustom.cli.main import main
from ddcustom.device.config import parse_settings
from ddcustom.device.detect.engine import Engine
from ddcustom.device.detect.profile import Profile, load_profile, parse_profile
from ddcustom.device.outputs.report import ReportBuilder
from ddcustom.device.outputs.stdout import JsonLinesSink
from ddcustom.device.sample import Connection, Feedback, ListeningPort, NetCounters, NetworkStats, Sample
from ddcustom.tooling.plot import History, PlotError, choose_metrics, draw, parse_history, render, thresholds

START = 1_800_000_000  # epoch seconds of the first sample
STEP = 10  # seconds between samples; every sample is also reported
NORMAL, MINING = (20.0, 45.0), (85.0, 180.0)  # (gpu_load_per_inference, avg_inference_time)
# per sample: feedback values, CPU %, established connections
SCENARIO = [
    (NORMAL, 30.0, 1),
    (NORMAL, 30.0, 1),
    (NORMAL, 30.0, 0),
    (MINING, 30.0, 2),  # 3: first violating datapoint
    (MINING, 30.0, 2),  # 4: second one: gpu-load-per-inference and avg-inference-time in alarm
    (MINING, 30.0, 2),
    (NORMAL, 30.0, 1),
    (NORMAL, 30.0, 1),  # 7: second normal datapoint: both cleared
    (NORMAL, 95.0, 1),  # 8: cpu-usage in alarm (normal < 90, one datapoint to alarm)
    (NORMAL, 95.0, 1),  # then the profile changes cpu-usage: its alarm is invalidated
    (MINING, 30.0, 1),
    (MINING, 30.0, 1),  # 11: in alarm again, still open at the end of the history
    (MINING, 30.0, 1),
]
PROFILE_CHANGE_AT = START + 9 * STEP + 5


def at(index: int) -> float:
    return float(START + index * STEP)


def scenario_profile(cpu_bound: float = 90) -> dict[str, Any]:
    """The default profile with the CPU rule raising alerts (the default keeps it quiet), bound changed."""
    data: dict[str, Any] = load_profile("crypto-mining").to_json()
    for behavior in data["behaviors"]:
        if behavior["name"] == "cpu-usage":
            behavior["suppressAlerts"] = False
            behavior["criteria"]["value"] = {"number": cpu_bound}
    return data


def changed_profile() -> Profile:
    return parse_profile(scenario_profile(cpu_bound=99))


def network(index: int, connections: int) -> NetworkStats:
    return NetworkStats(
        listening_tcp=(ListeningPort(22, None),),
        listening_udp=(),
        established_tcp=tuple(Connection("192.0.2.1", 443, 40000 + n, "eth0") for n in range(connections)),
        counters=NetCounters(1000 * index, 500 * index, 10 * index, 5 * index),
    )


def record(short_names: bool = False, thing: str = "t1") -> list[str]:
    """The JSON lines ``ddcustom run`` writes for SCENARIO, made by the component's own code."""
    settings, _ = parse_settings({"UseShortNames": short_names, "SecurityProfile": scenario_profile()})
    builder = ReportBuilder(settings)
    engine = Engine(settings.security_profile, thing)
    out = io.StringIO()
    sink = JsonLinesSink(out, thing, settings.alert_topic_for(thing))
    previous = None
    for index, ((load, inference_ms), cpu, connections) in enumerate(SCENARIO):
        sample = Sample(
            time=at(index),
            monotonic=100.0 + index * STEP,
            network=network(index, connections),
            cpu_percent=cpu,
            memory_percent=50.0,
            feedback=Feedback(load, inference_ms),
        )
        for event in engine.evaluate(sample):
            sink.publish_alert(event)
        report = builder.build(sample, previous)
        assert report is not None
        sink.publish_report(report)
        previous = sample
        if index == 9:
            for event in engine.replace_profile(changed_profile(), PROFILE_CHANGE_AT):
                sink.publish_alert(event)
    return out.getvalue().splitlines()


def alarm_spans(history: History) -> list[tuple[str, float, float, str, bool]]:
    return [(a.behavior, a.start, a.end, a.ended_by, a.start_known) for a in history.alarms]


EXPECTED_ALARMS = [
    ("avg-inference-time", at(4), at(7), "alarm-cleared", True),
    ("gpu-load-per-inference", at(4), at(7), "alarm-cleared", True),
    ("cpu-usage", at(8), PROFILE_CHANGE_AT, "alarm-invalidated", True),
    ("avg-inference-time", at(11), at(12), "open", True),
    ("gpu-load-per-inference", at(11), at(12), "open", True),
]


def legend_texts(ax: Axes) -> list[str]:
    legend = ax.get_legend()
    assert legend is not None
    return [text.get_text() for text in legend.get_texts()]


def write(tmp_path: Path, lines: list[str], name: str = "history.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines))
    return path


# ---- parsing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("short_names", [False, True])
def test_parses_series_and_alarm_intervals_of_a_recorded_history(short_names: bool) -> None:
    lines = record(short_names)
    assert ('"hed"' in lines[0]) == short_names
    history = parse_history(lines)
    assert (history.thing, history.reports, history.skipped) == ("t1", len(SCENARIO), 0)
    assert (history.start, history.end) == (at(0), at(12))
    assert list(history.series)[:5] == [
        "gpu_load_per_inference",
        "avg_inference_time",
        "cpu_usage",
        "memory_usage",
        "aws:all-bytes-in",
    ]
    load = history.series["gpu_load_per_inference"]
    assert load.times == [at(i) for i in range(len(SCENARIO))]
    assert load.values == [s[0][0] for s in SCENARIO]
    assert history.series["cpu_usage"].values[8] == 95
    # network_stats are deltas since the previous report: none in the first report
    assert history.series["aws:all-bytes-out"].times[0] == at(1)
    assert set(history.series["aws:all-bytes-out"].values) == {500}
    # the report leaves tcp_connections out with no connection established: that is a 0
    established = history.series["aws:num-established-tcp-connections"].values
    assert established == [float(s[2]) for s in SCENARIO]
    assert alarm_spans(history) == EXPECTED_ALARMS
    raised = {(a.behavior, a.start): a.value for a in history.alarms}
    assert raised[("gpu-load-per-inference", at(4))] == 85
    assert raised[("cpu-usage", at(8))] == 95


def test_long_and_short_names_give_the_same_history() -> None:
    assert parse_history(record(False)) == parse_history(record(True))


def test_bad_lines_are_skipped_and_counted() -> None:
    bad = [
        "not json",
        "[1, 2]",
        "[" * 100_000,
        '{"kind": "report", "report": {"header": {"version": "1.0"}}}',
        '{"kind": "report", "report": {"header": {"report_id": 1}, "custom_metrics": [1]}}',
        '{"kind": "alert", "alert": {"behavior": "cpu-usage"}}',
        '{"kind": "alert", "alert": {"behavior": {"name": "b", "metric": "m"}, "violationEventType": "x"}}',
        '{"kind": "other"}',
        "{truncated",
    ]
    lines = record()
    history = parse_history([bad[0], "", *lines[:5], *bad[1:], "   ", *lines[5:]])
    assert (history.lines, history.skipped) == (len(lines) + len(bad), len(bad))
    assert history.first_problem == "line 1: not JSON"
    assert history.reports == len(SCENARIO)
    assert alarm_spans(history) == EXPECTED_ALARMS
    assert parse_history(["[]"]).first_problem == "line 1: not a report or an alert"


def test_an_unclean_stop_of_a_run_in_the_history_is_neither_drawn_nor_a_bad_line() -> None:
    # a local run killed and started again prints its unclean-stop alert between the others
    stop = {"eventType": "unclean-stop", "eventId": "e", "thingName": "t", "eventTime": 1764650000}
    lines = record()
    history = parse_history([*lines[:5], json.dumps({"kind": "alert", "alert": stop}), *lines[5:]])
    assert history.skipped == 0 and alarm_spans(history) == EXPECTED_ALARMS


def test_values_that_are_not_finite_numbers_are_not_plotted() -> None:
    report: dict[str, Any] = {"header": {"report_id": START * 1000}}
    report["custom_metrics"] = {
        "cpu_usage": [{"number": 12.5}],
        "memory_usage": [{"number": True}],
        "gpu_power_watts": [{"number": "70"}],
        "gpu_process_names": [{"string_list": ["python3"]}],
    }
    history = parse_history(
        [json.dumps(report), '{"hed": {"rid": 1800000010000}, "cmet": {"x": [{"number": NaN}]}}']
    )
    assert history.reports == 2  # bare reports, as ``ddcustom collect --once --compact`` prints them
    assert list(history.series) == ["cpu_usage"]
    assert history.series["cpu_usage"].values == [12.5]


def test_an_alarm_cleared_without_its_start_in_the_history_began_before_it() -> None:
    lines = record()
    first_alarm = next(i for i, line in enumerate(lines) if '"in-alarm"' in line)
    history = parse_history(lines[first_alarm + 2 :])  # both in-alarm lines of the first alarm left out
    assert history.start == at(4)  # the report of sample 4 follows its alerts
    assert alarm_spans(history)[:2] == [
        ("avg-inference-time", at(4), at(7), "alarm-cleared", False),
        ("gpu-load-per-inference", at(4), at(7), "alarm-cleared", False),
    ]


def test_device_defender_event_times_in_milliseconds_are_understood() -> None:
    event = {
        "violationId": "v-1",
        "thingName": "t1",
        "securityProfileName": "crypto-mining",
        "behavior": {"name": "b", "metric": "cpu_usage"},
        "violationEventType": "in-alarm",
        "violationEventTime": (START + 5) * 1000,
        "metricValue": {"number": 99},
    }
    history = parse_history([*record()[:1], json.dumps({"kind": "alert", "alert": event})])
    assert alarm_spans(history)[0] == ("b", START + 5, START + 5, "open", True)


def test_a_windowed_sum_is_not_marked_as_a_reported_value() -> None:
    behavior: dict[str, Any] = {"name": "bytes-out", "metric": "aws:all-bytes-out"}
    behavior["criteria"] = {"durationSeconds": 300}
    event = {
        "violationId": "v-1",
        "thingName": "t1",
        "securityProfileName": "crypto-mining",
        "behavior": behavior,
        "violationEventType": "in-alarm",
        "violationEventTime": START + 5,
        "metricValue": {"count": 2_000_000_000},
    }
    (alarm,) = parse_history([json.dumps({"kind": "alert", "alert": event})]).alarms
    assert (alarm.behavior, alarm.start, alarm.value) == ("bytes-out", START + 5, None)
    del behavior["criteria"]
    (alarm,) = parse_history([json.dumps({"kind": "alert", "alert": event})]).alarms
    assert alarm.value == 2_000_000_000


def test_a_history_of_several_things_needs_thing() -> None:
    lines = record(thing="t1") + record(thing="t2")
    with pytest.raises(PlotError, match=r"several things \(t1, t2\): choose one with --thing"):
        parse_history(lines)
    assert parse_history(lines, thing="t2").reports == len(SCENARIO)
    assert alarm_spans(parse_history(lines, thing="t2")) == EXPECTED_ALARMS
    with pytest.raises(PlotError, match="no lines of thing 't3'"):
        parse_history(lines, thing="t3")


def test_thresholds_come_from_the_profiles_numeric_criteria() -> None:
    limits = thresholds(load_profile("crypto-mining"))
    assert [t.label for t in limits["gpu_load_per_inference"]] == ["gpu-load-per-inference: normal < 40"]
    assert [t.label for t in limits["miner_processes"]] == ["miner-processes: normal ≤ 0"]
    assert [t.label for t in limits["aws:all-bytes-out"]] == ["bytes-out: normal < 1e+09 summed over 300 s"]
    profile = parse_profile(
        [
            {
                "name": "cpu-p90",
                "metric": "cpu_usage",
                "criteria": {"comparisonOperator": "less-than", "statisticalThreshold": {"statistic": "p90"}},
            },
            {
                "name": "names",
                "metric": "gpu_process_names",
                "criteria": {"comparisonOperator": "in-set", "value": {"strings": ["python3"]}},
            },
        ]
    )
    assert list(thresholds(profile)) == ["cpu_usage"]
    (statistical,) = thresholds(profile)["cpu_usage"]
    assert statistical.value is None
    assert statistical.label == "cpu-p90: normal < p90 of its own history (not drawn)"


def test_choose_metrics() -> None:
    history = parse_history(record())
    assert choose_metrics(history, None) == list(history.series)
    assert choose_metrics(history, " cpu_usage,gpu_load_per_inference,cpu_usage") == [
        "cpu_usage",
        "gpu_load_per_inference",
    ]
    with pytest.raises(
        PlotError, match=r"unknown metric\(s\) in --metrics: nope, gpu_power_watts; the history"
    ):
        choose_metrics(history, "cpu_usage,nope,gpu_power_watts")
    with pytest.raises(PlotError, match="no reports in the history"):
        choose_metrics(parse_history(['{"kind": "alert"}']), None)


# ---- rendering -----------------------------------------------------------------------------------


def test_draw_puts_thresholds_and_alarms_on_each_metrics_subplot() -> None:
    history = parse_history(record())
    metrics = ["gpu_load_per_inference", "cpu_usage", "memory_usage", "aws:all-bytes-out"]
    load, cpu, memory, bytes_out = draw(history, changed_profile(), metrics).axes
    assert legend_texts(load) == [
        "gpu-load-per-inference: normal < 40",
        "in alarm: gpu-load-per-inference",
        "datapoint raising an alarm",
        "in alarm: gpu-load-per-inference, still at the end",
    ]
    assert legend_texts(cpu) == [
        "cpu-usage: normal < 99",
        "in alarm: cpu-usage, then invalidated",
        "datapoint raising an alarm",
    ]
    assert memory.get_legend() is None  # no behavior on it, no alarm
    # 1e9 bytes would squash values of 500 into a line at 0: named, not drawn
    assert legend_texts(bytes_out) == [
        "bytes-out: normal < 1e+09 summed over 300 s (far above the values, not drawn)"
    ]
    assert bytes_out.get_ylim()[1] < 1000
    assert bytes_out.get_title(loc="left") == "aws:all-bytes-out (per report interval)"
    assert load.get_title(loc="left") == "gpu_load_per_inference"
    figure = load.figure
    assert figure is not None
    title = figure.get_suptitle()
    assert title.startswith("t1: 13 reports, 5 alarms, ")
    assert "thresholds of security profile 'crypto-mining'" in title
    assert "alarms on metrics not shown: avg-inference-time (avg_inference_time)" in title


def test_a_threshold_over_flat_values_is_drawn() -> None:
    # A healthy device often reports 0 all along (gpu_busy_outside_inference): the bound must show.
    lines = [
        json.dumps(
            {
                "header": {"report_id": (START + 10 * i) * 1000},
                "custom_metrics": {"gpu_busy_outside_inference": [{"number": 0}]},
            }
        )
        for i in range(5)
    ]
    (axes,) = draw(parse_history(lines), load_profile("crypto-mining"), ["gpu_busy_outside_inference"]).axes
    assert legend_texts(axes) == ["gpu-busy-outside-inference: normal < 10"]
    assert axes.get_ylim()[1] >= 10


@pytest.mark.parametrize(
    "line",
    [
        '{"header": {"report_id": ' + str(10**400) + "}}",
        '{"header": {"report_id": 1000000000000000000}}',
        '{"kind": "alert", "alert": {"violationId": "v", "thingName": "t1", "securityProfileName": "p", '
        '"behavior": {"name": "b", "metric": "cpu_usage"}, "metricValue": {"number": 1}, '
        '"violationEventType": "in-alarm", "violationEventTime": 100000000000000000000}}',
    ],
    ids=["huge report_id", "report_id in the year 33658", "event time 1e20"],
)
def test_times_that_are_not_times_are_bad_lines(line: str) -> None:
    history = parse_history([*record(), line])
    assert history.skipped == 1 and "between 2000 and 2100" in history.first_problem
    draw(history, load_profile("crypto-mining"), ["cpu_usage"])  # and the picture still draws


def test_a_single_report_gets_a_minute_either_side() -> None:
    history = parse_history(record()[:1])
    assert history.reports == 1
    (axes,) = draw(history, load_profile("crypto-mining"), ["cpu_usage"]).axes
    low, high = axes.get_xlim()  # matplotlib date numbers: days
    assert round((high - low) * 86400) == 120
    assert legend_texts(axes) == ["cpu-usage: normal < 90, alerts suppressed"]  # within 3 x the value: drawn


def test_render_writes_png_and_svg(tmp_path: Path) -> None:
    history = parse_history(record())
    metrics = choose_metrics(history, None)
    render(history, load_profile("crypto-mining"), metrics, str(tmp_path / "out.png"))
    png = (tmp_path / "out.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000
    render(history, load_profile("crypto-mining"), metrics[:2], str(tmp_path / "out.SVG"))
    svg = (tmp_path / "out.SVG").read_text()
    assert svg.startswith("<?xml") and "<svg" in svg and svg.rstrip().endswith("</svg>")


# ---- the command line ------------------------------------------------------------------------------


def plot(*args: str) -> int:
    return main(["plot", *args])


def test_cli_plots_and_says_what_it_wrote(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    history = write(tmp_path, ["garbage", *record(short_names=True), "{}"])
    out = tmp_path / "out.png"
    assert plot(str(history), "-o", str(out), "--metrics", "cpu_usage,aws:all-bytes-out") == 0
    captured = capsys.readouterr()
    assert captured.out == f"wrote {out}: 2 metrics, 13 reports, 5 alarms\n"
    assert out.read_bytes().startswith(b"\x89PNG")
    warnings = [line for line in captured.err.splitlines() if "skipped" in line]
    assert len(warnings) == 1
    assert "skipped 2 of 23 lines" in warnings[0] and "(first: line 1: not JSON)" in warnings[0]


def test_cli_takes_thresholds_from_the_config_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    behaviors = [
        {
            "name": "busy",
            "metric": "cpu_usage",
            "criteria": {"comparisonOperator": "less-than", "value": {"number": 70}},
        }
    ]
    config = tmp_path / "my.yaml"
    config.write_text(f"SecurityProfile:\n  name: mine\n  behaviors: {json.dumps(behaviors)}\n")
    out = tmp_path / "out.svg"
    assert plot(str(write(tmp_path, record())), "-o", str(out), "--config", str(config)) == 0
    assert "wrote" in capsys.readouterr().out
    assert out.read_text().rstrip().endswith("</svg>")


@pytest.mark.parametrize(
    ("lines", "args", "message"),
    [
        (None, [], "ddcustom plot: cannot read history '{tmp}/missing.jsonl': No such file or directory"),
        ([], [], "ddcustom plot: no reports in the history (0 lines, 0 skipped); record one with: "),
        (
            ["x", "{}"],
            [],
            "ddcustom plot: no reports in the history (2 lines, 2 skipped, first: line 1: not JSON); ",
        ),
        (
            "record",
            ["--metrics", "cpu,gpu_load_per_inference"],
            "ddcustom plot: unknown metric(s) in --metrics: cpu; the history has: gpu_load_per_inference, ",
        ),
        ("record", ["-o", "{tmp}/out.jpg"], "ddcustom plot: output '{tmp}/out.jpg' must end in .png or .svg"),
        (
            "record",
            ["-o", "{tmp}/no/such/dir/out.png"],
            "ddcustom plot: cannot write '{tmp}/no/such/dir/out.png': ",
        ),
        (
            "record",
            ["--thing", "t9"],
            "ddcustom plot: no lines of thing 't9' in the history (things in it: t1)",
        ),
        (
            "record",
            ["--config", "{tmp}/nope.yaml"],
            "ddcustom: configuration error: cannot read configuration file",
        ),
    ],
)
def test_cli_errors_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], lines: Any, args: list[str], message: str
) -> None:
    history = (
        tmp_path / "missing.jsonl"
        if lines is None
        else write(tmp_path, record() if lines == "record" else lines)
    )
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "-o" not in args:
        args += ["-o", str(tmp_path / "out.png")]
    assert plot(str(history), *args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message.replace("{tmp}", str(tmp_path)))
    assert "\n" not in err
    assert not (tmp_path / "out.png").exists()


def test_cli_without_matplotlib_says_how_to_install_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in ("matplotlib.figure", "matplotlib.dates"):
        monkeypatch.setitem(sys.modules, module, None)  # None in sys.modules: the import fails
    assert plot(str(write(tmp_path, record())), "-o", str(tmp_path / "out.png")) == 2
    assert (
        capsys.readouterr().err == "ddcustom plot: matplotlib is not installed: pip install matplotlib "
        "(in the ddcustom repository: pip install '.[plot]')\n"
    )


def test_python_m_ddcustom_plot(tmp_path: Path) -> None:
    out = tmp_path / "out.png"
    env = {k: v for k, v in os.environ.items() if k != "SVCUID"}
    result = subprocess.run(
        [sys.executable, "-m", "ddcustom", "plot", str(write(tmp_path, record())), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"wrote {out}: ")
    assert out.read_bytes().startswith(b"\x89PNG")
