"""The agent: the one place that runs the stages in order, in a loop that does not die.

Everything runs on one thread, on the monotonic clock: a sample every DetectIntervalSeconds feeds the
detection engine, and every SampleIntervalSeconds the same sample also becomes a Device Defender report.
There is no timer thread that could die while the process looks alive (the public component's failure):
a failing cycle is logged and retried with backoff, and the loop only ends when asked to stop.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Optional

from ddcustom.device.alerts.evidence import EvidenceReader
from ddcustom.device.alerts.open_alarms import load_open_alarms, save_open_alarms
from ddcustom.device.alerts.redact import Redactor
from ddcustom.device.alerts.spool import AlertSpool, SpoolError
from ddcustom.device.backoff import backoff_delays
from ddcustom.device.baseline.observer import BaselineObserver
from ddcustom.device.config import Settings
from ddcustom.device.detect.engine import Engine
from ddcustom.device.detect.events import IN_ALARM, Alert, UncleanStopEvent, ViolationEvent
from ddcustom.device.fileio import read_bounded, write_atomic
from ddcustom.device.metrics import BASELINE_METRICS, METRICS
from ddcustom.device.outputs.inventory import InventoryPublisher
from ddcustom.device.outputs.report import ReportBuilder
from ddcustom.device.outputs.shadow import FleetShadow, reported_state
from ddcustom.device.outputs.sink import Sink, SinkError
from ddcustom.device.sample import Sample
from ddcustom.device.sources.collect import Collector

log = logging.getLogger(__name__)

# Backoff after cycles that raise: up to 1 s, doubling to 60 s, jittered so a fleet does not retry in step.
FAILURE_BACKOFF_BASE = 1.0
FAILURE_BACKOFF_CAP = 60.0


@dataclass
class AgentCounters:
    cycles: int = 0
    failed_cycles: int = 0
    reports_sent: int = 0
    reports_failed: int = 0
    alerts_raised: int = 0
    alerts_sent: int = 0


class Agent:
    """The component's loop. Each cycle: the sources (Collector) make a Sample, the baseline observer
    adds what the learned baseline does not know, the engine evaluates the security profile, alerts get
    their evidence and go through the durable spool to the sink; reports, the fleet shadow and the fleet
    inventory go to the sink when due. Settings change between cycles (``apply_settings``) without a
    restart."""

    def __init__(
        self,
        settings: Settings,
        thing_name: str,
        sink: Sink,
        *,
        collector: Optional[Collector] = None,
        spool: Optional[AlertSpool] = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``collector``, ``spool`` and ``clock`` default to the real ones the settings describe."""
        self.thing_name = thing_name
        self.sink = sink
        self.settings = settings
        self.counters = AgentCounters()
        self._clock = clock
        self._collector = collector or Collector(settings)
        # the stages after the sources read single processes through the collector's readers
        self._observer = BaselineObserver(self._collector.identities, self._collector.details)
        self._observer.configure(settings, uses_baseline(settings))
        self._evidence = EvidenceReader(
            self._collector.identities, self._collector.details, Redactor(settings.evidence_redact_patterns)
        )
        try:
            last_id: Optional[int] = int(read_bounded(settings.report_id_file, 32))
        except (OSError, ValueError):  # none yet, or unreadable: ids go on from the clock
            last_id = None
        self._builder = ReportBuilder(settings, last_report_id=last_id)
        self._engine = Engine(settings.security_profile, thing_name)
        self._spool = spool or AlertSpool(settings.alert_spool_dir, settings.alert_spool_max_bytes)
        resumed = load_open_alarms(settings.alarm_state_file)
        self._raise_alerts(self._engine.resume(resumed, time.time()), save=bool(resumed))
        self._last_reported: Optional[Sample] = None
        self._next_detect = 0.0
        self._next_report = 0.0  # 0: the first report goes out at once
        self._shadow = FleetShadow()
        self._inventory = InventoryPublisher(thing_name, settings.inventory_state_file, time.time)
        self._baseline_state = "off"  # of the last sample, for the fleet shadow
        self._shadow_failure: Optional[str] = None  # the last shadow error logged
        self._consecutive_failures = 0
        self._alert_failure: Optional[str] = None  # the last delivery error logged

    # ---- configuration -------------------------------------------------------------------------

    def apply_settings(self, settings: Settings) -> None:
        """Swap in new settings without a restart; keeps report_id, the last report and alarm state.

        Called on the loop's own thread (the Greengrass runner's before_cycle), between cycles.
        """
        old = self.settings
        self.settings = settings
        self._collector.apply_settings(settings)
        self._observer.configure(settings, uses_baseline(settings))
        if settings.evidence_redact_patterns != old.evidence_redact_patterns:
            self._evidence.redactor = Redactor(settings.evidence_redact_patterns)
        last_id = self._builder.last_report_id
        self._builder = ReportBuilder(settings, last_report_id=last_id)
        if (
            settings.security_profile != old.security_profile
            or settings.state_directory != old.state_directory
        ):
            self._raise_alerts(
                self._engine.replace_profile(settings.security_profile, time.time()), save=True
            )
        if (settings.alert_spool_dir, settings.alert_spool_max_bytes) != (
            old.alert_spool_dir,
            old.alert_spool_max_bytes,
        ):
            self._spool = self._spool.move_to(settings.alert_spool_dir, settings.alert_spool_max_bytes)
        if settings.inventory_state_file != old.inventory_state_file:
            self._inventory = InventoryPublisher(self.thing_name, settings.inventory_state_file, time.time)
        self._next_report = 0.0  # as the public component does: a report with the new settings now
        self._next_detect = 0.0

    # ---- one step of the loop ------------------------------------------------------------------

    def run_cycle(self, now: float) -> float:
        """Do what is due at monotonic time ``now``; return the monotonic time of the next step."""
        settings = self.settings
        report_due = self._next_report <= now
        detect_due = self._next_detect <= now
        if detect_due or report_due:
            sample = self._observer.observe(self._collector.sample())
            if sample.baseline is None:
                self._baseline_state = "off"
            else:
                self._baseline_state = "learning" if sample.baseline.learning else "active"
            self._raise_alerts(
                [self._with_evidence(event, sample) for event in self._engine.evaluate(sample)]
            )
            interval = settings.detect_interval_seconds
            self._next_detect = _next_tick(self._next_detect, interval, now) if detect_due else now + interval
            if report_due:
                self._send_report(sample)
                self._next_report = _next_tick(self._next_report, settings.report_interval_seconds, now)
        self._flush_alerts()
        if settings.fleet_shadow:
            self._update_shadow(now)
        store = self._observer.store
        if settings.fleet_inventory and store is not None:
            self._inventory.run(self.sink, store, self._baseline_state == "learning", now)
        self.counters.cycles += 1
        return min(self._next_detect, self._next_report)

    def _with_evidence(self, event: ViolationEvent, sample: Sample) -> ViolationEvent:
        """An in-alarm event with the evidence of what its metric points at, when it declares any."""
        metric = METRICS.get(str(event.behavior.get("metric")))
        if event.event_type != IN_ALARM or metric is None or metric.culprits is None:
            return event
        return replace(event, evidence=self._evidence.collect(sample, metric.culprits(sample)))

    def _raise_alerts(self, events: list[ViolationEvent], save: bool = False) -> None:
        """Persist the open alarms (when they changed), then spool and log the events."""
        if events or save:
            save_open_alarms(self.settings.alarm_state_file, self._engine.active_alarms())
        for event in events:
            self._raise_alert(event)

    def raise_alert(self, event: Alert) -> None:
        """Spool an alert raised outside detection (the unclean stop of the last run) and send it with the
        others, in order, at the next cycle."""
        self._raise_alert(event)

    def _raise_alert(self, event: Alert) -> None:
        self.counters.alerts_raised += 1
        if isinstance(event, UncleanStopEvent):
            log.error(
                "%s: the last run of the component on %s did not stop cleanly (%s); detection was down for "
                "%s s (alert %s)",
                event.event_type,
                self.thing_name,
                event.cause,
                event.detection_down.get("seconds"),
                event.event_id,
            )
        else:
            log.warning(
                "%s: behavior %r on %s (value %s)",
                event.event_type,
                event.behavior_name,
                self.thing_name,
                event.metric_value,
            )
        try:
            self._spool.append(event)
        except SpoolError as exc:
            # Larger than the whole spool (a huge list value): still try to deliver it, just not durably.
            log.error("alert %s could not be spooled (%s); sending it directly", event.identity[0], exc)
            try:
                self.sink.publish_alert(event)
                self.counters.alerts_sent += 1
            except SinkError as send_exc:
                log.error("alert %s lost: %s", event.identity[0], send_exc)

    def _send_report(self, sample: Sample) -> None:
        report = self._builder.build(sample, self._last_reported)
        if report is None:  # nothing measured: nothing to report
            return
        try:
            sent = self.sink.publish_report(report)
        except SinkError as exc:
            # The next report carries the deltas since the last one that went out.
            self.counters.reports_failed += 1
            log.warning("report %s not sent: %s", self._builder.last_report_id, exc)
            return
        if sent:
            self._last_reported = sample
            self.counters.reports_sent += 1
            path = self.settings.report_id_file
            log.info(
                "report %s sent; the next in %d s",
                self._builder.last_report_id,
                self.settings.report_interval_seconds,
            )
            try:
                os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
                write_atomic(path, str(self._builder.last_report_id).encode(), durable=True)
            except OSError as exc:
                log.warning("cannot persist the last report_id in %s: %s", path, exc)

    def _flush_alerts(self) -> None:
        """Send spooled alerts in order; stop at the first failure so order is kept.

        A failure is retried every cycle but logged once per distinct error (a refused topic would
        otherwise log every few seconds for as long as the deployment is wrong).
        """
        for key, event in self._spool.pending():
            try:
                self.sink.publish_alert(event)
            except SinkError as exc:
                if str(exc) != self._alert_failure:
                    self._alert_failure = str(exc)
                    log.warning(
                        "alerts kept in the spool (%d), retrying every cycle: %s", len(self._spool), exc
                    )
                return
            self._spool.ack(key)
            self.counters.alerts_sent += 1
            if self._alert_failure is not None:
                log.info("alert delivery works again; spooled alerts are being sent")
                self._alert_failure = None

    def _update_shadow(self, now: float) -> None:
        """The fleet shadow, when its state changed or the heartbeat is due; retried every cycle."""
        state = reported_state(self._engine.active_alarms(), self._engine.profile.name, self._baseline_state)
        if not self._shadow.due(state, now):
            return
        try:
            if self.sink.publish_shadow(self._shadow.update_document(state, time.time())):
                self._shadow.sent(state, now)
                self._shadow_failure = None
        except SinkError as exc:
            if str(exc) != self._shadow_failure:
                self._shadow_failure = str(exc)
                log.warning("fleet shadow not updated, retrying every cycle: %s", exc)

    # ---- the loop ------------------------------------------------------------------------------

    def run_forever(
        self,
        stop: threading.Event,
        wake: Optional[threading.Event] = None,
        before_cycle: Optional[Callable[[], None]] = None,
        seconds_to_other_work: Optional[Callable[[], Optional[float]]] = None,
    ) -> None:
        """Run until ``stop`` is set. ``wake`` interrupts a wait (configuration update, shutdown).

        ``before_cycle`` runs first in every cycle (the Greengrass runner reconnects and applies
        configuration updates there); ``seconds_to_other_work`` says in how many seconds it wants to
        run again, if sooner than the next sample (a pending reconnect attempt), or None.
        """
        wake = wake or threading.Event()
        delays = backoff_delays(FAILURE_BACKOFF_BASE, FAILURE_BACKOFF_CAP)
        while not stop.is_set():
            try:
                if before_cycle is not None:
                    before_cycle()
                next_at = self.run_cycle(self._clock())
                if self._consecutive_failures:
                    self._consecutive_failures = 0
                    delays = backoff_delays(FAILURE_BACKOFF_BASE, FAILURE_BACKOFF_CAP)
            except Exception:
                self.counters.failed_cycles += 1
                self._consecutive_failures += 1
                delay = next(delays)
                log.exception(
                    "cycle failed (%d in a row); retrying in %.1f s", self._consecutive_failures, delay
                )
                next_at = self._clock() + delay
            timeout = max(0.0, next_at - self._clock())
            extra = seconds_to_other_work() if seconds_to_other_work is not None else None
            if extra is not None:
                timeout = min(timeout, extra)
            if wake.wait(timeout):
                wake.clear()

    def close(self) -> None:
        self._observer.close()
        self._collector.close()

    def status(self) -> dict[str, Any]:
        return {"counters": vars(self.counters), "pending_alerts": len(self._spool)}


def uses_baseline(settings: Settings) -> bool:
    """Whether the security profile evaluates a metric of the learned baseline (which then runs)."""
    return any(b.metric in BASELINE_METRICS for b in settings.security_profile.device_behaviors)


def _next_tick(previous: float, interval: float, now: float) -> float:
    """The next time on the interval grid; missed ticks are skipped, never bunched up."""
    if previous <= 0 or previous + interval <= now:
        return now + interval
    return previous + interval
