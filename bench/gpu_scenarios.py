"""GPU scenarios: does the component catch GPU miners, how fast, and does it stay quiet otherwise?

Each scenario runs the component (``python -m ddcustom run``, DetectIntervalSeconds 5, the default
security profile or the --behaviors of it, EnableGPUMetrics true, WatchedProcesses [inference-app or
--app-name]) next to a benign ML inference application (8 fp16 2048x2048 layers, batch 64, --rate
inferences/s, steady or in bursts) that wraps each inference in ddcustom.feedback's InferenceMeter. After
--warmup-seconds a miner simulation (64-bit integer hashing on the GPU, on its own CUDA stream) starts,
in a separate process at 100/25/10 % duty, renamed like the application, as a thread inside the
application's process, or renamed like the application after the application was stopped (at least 60 s
for that one), and runs --phase-seconds. The component's alerts are read from its stdout JSON lines. Per
scenario: detected or not, seconds from the miner's first GPU call to the first alert, and false alarms
(alerts before the miner started).

Needs an NVIDIA GPU (driver with NVML) and PyTorch or CuPy with CUDA. Without them it says what is
missing, runs a short end-to-end check instead (the component with GPU metrics on, next to a CPU
stand-in application using the meter), marks the GPU scenarios "not run: no GPU" and exits 0. Exit
code 1: the component, the application or a miner failed to start or died (last log lines shown).

    python bench/gpu_scenarios.py --quick
    python bench/gpu_scenarios.py --scenarios miner-25,miner-in-process --phase-seconds 30

Results: a Markdown table on stdout and a JSON file (--out).
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Optional

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "bench" / "results" / "gpu_scenarios.json"
BUILT_IN_PROFILE = json.loads((REPO / "src" / "ddcustom" / "profiles" / "crypto-mining.json").read_text())
APP_NAME = "inference-app"  # the watched application's process name (comm)
MINER_NAME = "svc-helper"  # a neutral name: the known-miner-name rule must not be what catches it
DETECT_INTERVAL = 5
SEPARATE_PROCESS_TARGET_SECONDS = 15.0
REHEARSAL = "CPU rehearsal: "  # the status prefix of --cpu-rehearsal results


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    miner: str  # "", "process" or "thread" (inside the application's process)
    duty: float = 0.0
    renamed: bool = False  # the miner process takes the application's name
    bursty: bool = False  # benign workload in bursts instead of steady
    replaces_app: bool = False  # the application is stopped first: the miner is its only namesake


SCENARIOS = [
    Scenario("benign-steady", "steady inference, no miner", ""),
    Scenario("benign-bursty", "bursty inference, no miner", "", bursty=True),
    Scenario("miner-100", "separate miner process, 100 % duty", "process", 1.0),
    Scenario("miner-25", "separate miner process, 25 % duty", "process", 0.25),
    Scenario("miner-10", "separate miner process, 10 % duty", "process", 0.10),
    Scenario(
        "miner-renamed", f"miner process renamed {APP_NAME!r}, 25 % duty", "process", 0.25, renamed=True
    ),
    Scenario("miner-in-process", "miner thread inside the application, 25 % duty", "thread", 0.25),
    Scenario(
        "miner-replaces-app",
        f"application stopped, miner renamed {APP_NAME!r} started, 25 % duty",
        "process",
        0.25,
        renamed=True,
        replaces_app=True,
    ),
]
# Caught only once the stopped meter's file is older than MeterStaleSeconds (30 s by default), then over
# two datapoints: that scenario's miner runs at least this long.
REPLACES_APP_MIN_PHASE_SECONDS = 60.0
# The application outlives its scenario by this much (a miner's own GPU start-up delays the phase).
APP_MARGIN_SECONDS = 60.0


@dataclass
class Result:
    scenario: str
    description: str
    target: str
    status: str  # "detected", "not detected", "no false alarm", "false alarms", "not run: ..."
    detected: Optional[bool] = None
    seconds_to_first_alert: Optional[float] = None
    false_alarms: Optional[int] = None
    behaviors: list[str] = field(default_factory=list)  # behaviors that alarmed after the miner started
    benign_behaviors: list[str] = field(default_factory=list)  # behaviors that alarmed before it
    target_met: Optional[bool] = None


# ---- finding a GPU ---------------------------------------------------------------------------------


def probe_gpu() -> tuple[Optional[str], list[str], dict[str, Any]]:
    """(backend "torch"/"cupy" or None, what was found or missing, GPU facts from NVML)."""
    notes: list[str] = []
    facts: dict[str, Any] = {}
    try:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        facts["gpus"] = [pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(count)]
        facts["driver"] = pynvml.nvmlSystemGetDriverVersion()
        pynvml.nvmlShutdown()
        notes.append(f"NVML: {count} GPU(s) {facts['gpus']}, driver {facts['driver']}")
    except ImportError:
        notes.append("NVML: nvidia-ml-py is not installed")
    except Exception as exc:  # pynvml.NVMLError: no driver / library / device
        notes.append(f"NVML: {exc}")
    if not facts.get("gpus"):
        return None, notes, facts
    # Neither check creates a CUDA context: this process must not show up as a GPU compute process.
    try:
        import torch

        if torch.cuda.is_available():
            return "torch", notes, facts
        notes.append("PyTorch: installed, but CUDA is not available to it")
    except ImportError:
        notes.append("PyTorch: not installed")
    except Exception as exc:  # a broken install: missing CUDA libraries (OSError), ...
        notes.append(f"PyTorch: {type(exc).__name__}: {exc}")
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return "cupy", notes, facts
    except ImportError:
        notes.append("CuPy: not installed")
    except Exception as exc:  # cupy.cuda.runtime.CUDARuntimeError
        notes.append(f"CuPy: {type(exc).__name__}: {exc}")
    return None, notes, facts


# ---- GPU work (runs in the application and miner processes) ---------------------------------------


class GpuWork:
    """The benign inference: 8 fp16 2048x2048 layers, batch 64."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        if backend == "torch":
            import torch

            self._torch = torch
            layers = [torch.nn.Linear(2048, 2048) for _ in range(8)]
            self._model = torch.nn.Sequential(*layers).half().cuda().eval()
            self._x = torch.randn(64, 2048, device="cuda", dtype=torch.float16)
        elif backend == "cupy":
            import cupy

            self._cp = cupy
            self._weights = [cupy.random.randn(2048, 2048).astype(cupy.float16) for _ in range(8)]
            self._xc = cupy.random.randn(64, 2048).astype(cupy.float16)
        else:
            raise ValueError(f"unknown GPU backend {backend!r}")

    def infer(self) -> None:
        if self.backend == "torch":
            with self._torch.inference_mode():
                self._model(self._x)
            self._torch.cuda.current_stream().synchronize()  # only this thread's stream
        else:
            y = self._xc
            for w in self._weights:
                y = self._cp.maximum(y @ w, 0)
            self._cp.cuda.get_current_stream().synchronize()


def make_hasher(backend: str) -> Callable[[], None]:
    """A function that runs one chunk (a few ms) of 64-bit integer hashing on its own CUDA stream."""
    if backend == "cpu":  # --cpu-rehearsal: the same rhythm on the CPU

        def chunk_cpu() -> None:
            sum(i * i for i in range(20_000))

        return chunk_cpu
    if backend == "torch":
        import torch

        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            state = torch.randint(0, 2**62, (1 << 22,), dtype=torch.int64, device="cuda")

        def chunk_torch() -> None:
            with torch.cuda.stream(stream):
                for _ in range(64):
                    state.mul_(6364136223846793005).add_(1442695040888963407)
                    state.bitwise_xor_(state >> 29)
            stream.synchronize()

        return chunk_torch
    import cupy as cp

    cp_stream = cp.cuda.Stream(non_blocking=True)
    with cp_stream:
        cp_state = cp.random.randint(0, 2**62, size=1 << 22, dtype=cp.int64)

    def chunk_cupy() -> None:
        nonlocal cp_state
        with cp_stream:
            for _ in range(64):
                cp_state = cp_state * 6364136223846793005 + 1442695040888963407
                cp_state ^= cp_state >> 29
        cp_stream.synchronize()

    return chunk_cupy


class CpuWork:
    """Stand-in for the inference on a machine without a GPU (the no-GPU end-to-end check)."""

    def infer(self) -> None:
        sum(i * i for i in range(20_000))


def run_at_duty(chunk: Callable[[], None], duty: float, until: float) -> None:
    """Run ``chunk`` for ``duty`` of the time: after each chunk, sleep in proportion to its length."""
    while time.monotonic() < until:
        start = time.monotonic()
        chunk()
        busy = time.monotonic() - start
        if duty < 1.0:
            time.sleep(busy * (1.0 - duty) / duty)


def set_process_name(name: str) -> None:
    """Set this process's comm (what /proc/<pid>/comm, ps and the component show); Linux only."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME, from the main thread


def app_main(args: argparse.Namespace) -> int:
    """The benign application: paced inferences in the InferenceMeter (and maybe a miner thread)."""
    from ddcustom.feedback import InferenceMeter

    set_process_name(args.name)
    meter = InferenceMeter(  # before loading the model, as docs/gpu.md advises
        load_file=args.load_file,
        time_file=args.time_file,
        busy_outside_file=args.busy_outside_file,
        flush_seconds=DETECT_INTERVAL,
    )
    work: Any = CpuWork() if args.backend == "cpu" else GpuWork(args.backend)
    end = time.monotonic() + args.seconds
    if args.thread_miner_duty > 0:
        start_miner_thread(args.backend, args.thread_miner_duty, args.thread_miner_after, end)
    rng = random.Random(7)
    burst_end = time.monotonic() + rng.uniform(2, 6)
    print("app-started", flush=True)
    try:
        while time.monotonic() < end:
            if args.bursty and time.monotonic() > burst_end:  # idle 2-10 s, then a 2-6 s burst
                time.sleep(min(rng.uniform(2, 10), max(0.0, end - time.monotonic())))
                burst_end = time.monotonic() + rng.uniform(2, 6)
            started = time.monotonic()
            with meter:
                work.infer()
            time.sleep(max(0.0, 1.0 / args.rate - (time.monotonic() - started)))
    finally:
        meter.close()
    return 0


def start_miner_thread(backend: str, duty: float, after: float, end: float) -> None:
    def mine() -> None:
        time.sleep(after)
        print("miner-starting", flush=True)
        chunk = make_hasher(backend)
        chunk()
        print("miner-started", flush=True)
        run_at_duty(chunk, duty, end)

    threading.Thread(target=mine, name="miner", daemon=True).start()


def miner_main(args: argparse.Namespace) -> int:
    set_process_name(args.name)
    if args.backend != "cpu":
        importlib.import_module(args.backend)  # seconds of import before the miner is on the GPU
    print("miner-starting", flush=True)  # the next line creates its CUDA context
    chunk = make_hasher(args.backend)
    chunk()
    print("miner-started", flush=True)
    run_at_duty(chunk, args.duty, time.monotonic() + args.seconds)
    return 0


# ---- the component and its alerts ------------------------------------------------------------------


class Component:
    """``python -m ddcustom run`` with a temporary configuration; collects in-alarm events and reports."""

    def __init__(
        self,
        workdir: Path,
        log: IO[str],
        report_seconds: int = 300,
        behaviors: Optional[list[str]] = None,
        app_name: str = APP_NAME,
    ) -> None:
        self.alarms: list[tuple[float, str]] = []  # (monotonic time seen, behavior name)
        self.reported_metrics: set[str] = set()  # custom metric names seen in reports
        config = {
            "SampleIntervalSeconds": report_seconds,
            "DetectIntervalSeconds": DETECT_INTERVAL,
            "EnableGPUMetrics": True,
            "EnableDeviceDefenderReport": False,
            "GpuLoadFeedbackFile": str(workdir / "gpu_load_fb"),
            "InferenceTimeFeedbackFile": str(workdir / "gpu_inference_fb"),
            "GpuBusyOutsideFeedbackFile": str(workdir / "gpu_busy_outside_fb"),
            "WatchedProcesses": [app_name],
            "StateDirectory": str(workdir / "state"),
            "LogLevel": "INFO",
        }
        if behaviors:  # only these of the default profile's rules
            kept = [b for b in BUILT_IN_PROFILE["behaviors"] if b["name"] in behaviors]
            config["SecurityProfile"] = {**BUILT_IN_PROFILE, "behaviors": kept}
        config_file = workdir / "config.json"
        config_file.write_text(json.dumps(config, indent=2))
        command = [sys.executable, "-m", "ddcustom", "run", "--config", str(config_file), "--thing", "bench"]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=log, text=True, env=child_env()
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if not isinstance(message, dict):
                continue
            report = message.get("report")
            if message.get("kind") == "report" and isinstance(report, dict):
                self.reported_metrics.update(report.get("custom_metrics", {}))
            alert = message.get("alert")
            if not (message.get("kind") == "alert" and isinstance(alert, dict)):
                continue
            if alert.get("violationEventType", "in-alarm") == "in-alarm":
                behavior = alert.get("behavior", {})
                self.alarms.append((time.monotonic(), str(behavior.get("name", "?"))))

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> Optional[int]:
        stop_process(self.process)
        self._reader.join(timeout=5)
        return self.process.returncode


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_helper(role: str, options: list[str], log: IO[str]) -> subprocess.Popen[str]:
    command = [sys.executable, str(Path(__file__).resolve()), role, *options]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, env=child_env())


def wait_for_line(process: subprocess.Popen[str], expected: str, timeout: float) -> Optional[float]:
    """Monotonic time at which ``process`` printed ``expected``, or None (ended or timed out)."""
    found: list[float] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if line.strip() == expected:
                found.append(time.monotonic())
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    return found[0] if found else None


def stop_process(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


# ---- scenarios -------------------------------------------------------------------------------------


def target_of(s: Scenario, times: Timing) -> str:
    if not s.miner:
        return f"no false alarm over {times.benign_bursty if s.bursty else times.benign_steady:g} s"
    if s.replaces_app:
        return "detected by gpu-busy-outside-inference (after MeterStaleSeconds, 30 s)"
    if s.miner == "process":
        return f"detected within {SEPARATE_PROCESS_TARGET_SECONDS:g} s"
    return "detected"


def feedback_options(workdir: Path) -> list[str]:
    """The application's feedback files: where the component's configuration (Component) reads them."""
    return [
        "--load-file", str(workdir / "gpu_load_fb"),
        "--time-file", str(workdir / "gpu_inference_fb"),
        "--busy-outside-file", str(workdir / "gpu_busy_outside_fb"),
    ]  # fmt: skip


def run_scenario(
    s: Scenario, backend: str, times: Timing, workdir: Path, log: IO[str], args: argparse.Namespace
) -> Result:
    benign_seconds = times.benign_bursty if s.bursty else times.benign_steady
    miner_at = times.warmup
    phase = max(times.phase, REPLACES_APP_MIN_PHASE_SECONDS) if s.replaces_app else times.phase
    total = (benign_seconds if not s.miner else times.warmup + phase) + APP_MARGIN_SECONDS
    result = Result(s.name, s.description, target_of(s, times), status="")
    component = Component(workdir, log, behaviors=args.behaviors, app_name=args.app_name)
    app_options = [
        "--backend", backend, "--seconds", str(total), "--rate", str(times.rate), *feedback_options(workdir),
        "--name", args.app_name,
    ]  # fmt: skip
    if s.bursty:
        app_options.append("--bursty")
    if s.miner == "thread":
        app_options += ["--thread-miner-duty", str(s.duty), "--thread-miner-after", str(miner_at)]
    app = start_helper("app", app_options, log)
    miner: Optional[subprocess.Popen[str]] = None
    try:
        if wait_for_line(app, "app-started", 120) is None:
            result.status = "failed: the application did not start (see the log)"
            return result
        # starting_at: the miner is about to touch the GPU (alerts from then on are its own);
        # started_at: its first hashing chunk is done, its phase begins.
        starting_at: Optional[float] = None
        started_at: Optional[float] = None
        if s.miner == "process":
            time.sleep(miner_at)
            if s.replaces_app:
                stop_process(app)
            miner_options = ["--backend", backend, "--duty", str(s.duty), "--seconds", str(phase)]
            miner_options += ["--name", args.app_name if s.renamed else MINER_NAME]
            miner = start_helper("miner", miner_options, log)
            starting_at = wait_for_line(miner, "miner-starting", 120)
            started_at = wait_for_line(miner, "miner-started", 120) if starting_at is not None else None
        elif s.miner == "thread":
            starting_at = wait_for_line(app, "miner-starting", miner_at + 120)
            started_at = wait_for_line(app, "miner-started", 120) if starting_at is not None else None
        if s.miner and (starting_at is None or started_at is None):
            result.status = "failed: the miner did not start (see the log)"
            return result
        end = (started_at + phase) if started_at is not None else time.monotonic() + benign_seconds
        while time.monotonic() < end and component.alive():
            time.sleep(0.5)
        if not component.alive():
            result.status = f"failed: the component exited with code {component.process.returncode}"
            return result
    finally:
        for process in (miner, app):
            if process is not None:
                stop_process(process)
        component.stop()
    before = [b for t, b in component.alarms if starting_at is None or t < starting_at]
    after = [(t, b) for t, b in component.alarms if starting_at is not None and t >= starting_at]
    result.false_alarms = len(before)
    result.benign_behaviors = sorted(set(before))
    if not s.miner:
        result.status = "no false alarm" if not before else "false alarms"
        result.target_met = not before
        return result
    assert starting_at is not None
    result.detected = bool(after)
    result.behaviors = sorted({b for _, b in after})
    if after:
        result.seconds_to_first_alert = round(after[0][0] - starting_at, 1)
    result.status = "detected" if after else "not detected"
    if s.replaces_app:  # only the stopped meter can tell: nothing else may take the credit
        result.target_met = "gpu-busy-outside-inference" in result.behaviors
    elif s.miner == "process":
        seconds = result.seconds_to_first_alert
        result.target_met = seconds is not None and seconds <= SEPARATE_PROCESS_TARGET_SECONDS
    else:
        result.target_met = result.detected
    return result


def run_smoke(seconds: float, workdir: Path, log: IO[str]) -> Result:
    """No GPU: the component with GPU metrics on, next to a CPU stand-in application using the meter."""
    result = Result(
        "component-no-gpu", "component with EnableGPUMetrics next to a CPU stand-in app",
        f"runs {seconds:g} s, no alert; reports the app's inference time, no GPU metric", status="",
    )  # fmt: skip
    component = Component(workdir, log, report_seconds=DETECT_INTERVAL)
    app_options = [
        "--backend", "cpu", "--seconds", str(seconds + 5), "--rate", "10", *feedback_options(workdir),
        "--name", APP_NAME,
    ]  # fmt: skip
    app = start_helper("app", app_options, log)
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end and component.alive():
            time.sleep(0.5)
        alive = component.alive()
    finally:
        stop_process(app)
        code = component.stop()
    result.false_alarms = len(component.alarms)
    result.benign_behaviors = sorted({b for _, b in component.alarms})
    gpu_metrics = sorted(m for m in component.reported_metrics if m.startswith("gpu_"))
    if not alive:
        result.status = f"failed: the component exited with code {code} (see the log)"
    elif not (workdir / "gpu_inference_fb").exists():
        result.status = "failed: the application wrote no inference time file"
    elif "avg_inference_time" not in component.reported_metrics:
        result.status = "failed: no report carried avg_inference_time from the application's meter"
    else:
        result.status = "ran" + (f", {result.false_alarms} alert(s)" if result.false_alarms else ", no alert")
        result.status += "; reports carry avg_inference_time"
        result.status += (
            f"; GPU metrics reported: {', '.join(gpu_metrics)}" if gpu_metrics else ", no GPU metric"
        )
    result.target_met = result.status.startswith("ran") and not component.alarms and not gpu_metrics
    return result


# ---- output ----------------------------------------------------------------------------------------


def markdown_table(results: list[Result]) -> str:
    lines = [
        "| scenario | what | target | result | s to 1st alert | false alarms | behaviors | target met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        seconds = "" if r.seconds_to_first_alert is None else f"{r.seconds_to_first_alert:.1f}"
        alarms = "" if r.false_alarms is None else str(r.false_alarms)
        behaviors = ", ".join(r.behaviors or r.benign_behaviors)
        met = {True: "yes", False: "NO", None: ""}[r.target_met]
        cells = [r.scenario, r.description, r.target, r.status, seconds, alarms, behaviors, met]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass(frozen=True)
class Timing:
    warmup: float  # benign seconds before a miner starts (false alarms counted)
    phase: float  # seconds a miner runs
    benign_steady: float
    benign_bursty: float
    rate: float  # inferences per second of the benign application
    smoke: float  # the no-GPU end-to-end check


def parse_args(argv: list[str]) -> argparse.Namespace:
    width = max(len(s.name) for s in SCENARIOS)
    parser = argparse.ArgumentParser(
        description=__doc__,
        epilog="scenarios:\n" + "\n".join(f"  {s.name:{width}} {s.description}" for s in SCENARIOS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--quick", action="store_true", help="short phases (minutes on a GPU; under 1 min without)")
    add("--scenarios", default="all", help="comma-separated scenario names, or 'all' (default)")
    add("--phase-seconds", type=float, help="seconds each miner runs (default 45, quick 30)")
    add("--warmup-seconds", type=float, help="benign seconds before a miner starts (default 30, quick 15)")
    add("--benign-seconds", type=float, help="length of the bursty benign run (default 300, quick 60)")
    add("--rate", type=float, default=20.0, help="inferences per second of the application (default 20)")
    add(
        "--behaviors",
        type=lambda text: text.split(","),
        help="comma-separated behaviors of the default profile to evaluate (default: all)",
    )
    add(
        "--app-name",
        default=APP_NAME,
        help=f"the application's process name, 15 characters at most ({APP_NAME})",
    )
    add("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    add(
        "--cpu-rehearsal",
        action="store_true",
        help="run every scenario with CPU stand-ins for the inference and the miners, to check the "
        "benchmark itself on a machine without a GPU; GPU rules cannot fire, so it measures no detection",
    )
    return parser.parse_args(argv)


def parse_helper_args(role: str, argv: list[str]) -> argparse.Namespace:
    """Options of the internal roles: the benchmark starts itself as ``app`` or ``miner``."""
    parser = argparse.ArgumentParser(prog=f"gpu_scenarios.py {role}")
    parser.add_argument("--backend", required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--name", required=True)
    if role == "app":
        parser.add_argument("--rate", type=float, required=True)
        parser.add_argument("--load-file", required=True)
        parser.add_argument("--time-file", required=True)
        parser.add_argument("--busy-outside-file", required=True)
        parser.add_argument("--bursty", action="store_true")
        parser.add_argument("--thread-miner-duty", type=float, default=0.0)
        parser.add_argument("--thread-miner-after", type=float, default=0.0)
    else:
        parser.add_argument("--duty", type=float, required=True)
    return parser.parse_args(argv)


def timing_of(args: argparse.Namespace) -> Timing:
    quick = args.quick
    warmup = args.warmup_seconds if args.warmup_seconds is not None else (15.0 if quick else 30.0)
    phase = args.phase_seconds if args.phase_seconds is not None else (30.0 if quick else 45.0)
    bursty = args.benign_seconds if args.benign_seconds is not None else (60.0 if quick else 300.0)
    return Timing(warmup, phase, benign_steady=warmup + phase, benign_bursty=bursty, rate=args.rate,
                  smoke=15.0 if quick else 30.0)  # fmt: skip


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["app"]:
        return app_main(parse_helper_args("app", argv[1:]))
    if argv[:1] == ["miner"]:
        return miner_main(parse_helper_args("miner", argv[1:]))
    args = parse_args(argv)
    names = [s.name for s in SCENARIOS] if args.scenarios == "all" else args.scenarios.split(",")
    unknown = sorted(set(names) - {s.name for s in SCENARIOS})
    if unknown:
        print(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(s.name for s in SCENARIOS)}")
        return 2
    chosen = [s for s in SCENARIOS if s.name in names]
    unknown = sorted(set(args.behaviors or ()) - {b["name"] for b in BUILT_IN_PROFILE["behaviors"]})
    if unknown:
        print(f"unknown behavior(s) {', '.join(unknown)} of the default profile")
        return 2
    if len(args.app_name) > 15:  # the kernel keeps 15 characters of a process name
        print(f"--app-name {args.app_name!r} is longer than 15 characters")
        return 2
    times = timing_of(args)
    backend, notes, facts = probe_gpu() if not args.cpu_rehearsal else ("cpu", ["CPU rehearsal"], {})
    for note in notes:
        print(f"  {note}")
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        log_path = Path(tmp) / "processes.log"
        with open(log_path, "w") as log:
            if backend is None:
                if facts.get("gpus"):
                    why = "no PyTorch/CuPy with CUDA"
                    print("\nAn NVIDIA GPU is present, but neither PyTorch nor CuPy can use it.")
                else:
                    why = "no GPU"
                    print("\nNo NVIDIA GPU found on this machine.")
                print("Not measured: detection of GPU miners (separate process at 100/25/10 % duty, renamed,")
                print("in-process thread, replacing the application), seconds to the first alert, false")
                print("alarms under GPU inference.")
                print(f"Running the end-to-end check without a GPU instead ({times.smoke:g} s).\n")
                workdir = Path(tmp) / "smoke"
                workdir.mkdir()
                results.append(run_smoke(times.smoke, workdir, log))
                for s in chosen:
                    results.append(Result(s.name, s.description, target_of(s, times), f"not run: {why}"))
            else:
                if backend == "cpu":
                    print("\nCPU rehearsal: CPU stand-ins for the inference and the miners. This checks the")
                    print("benchmark's machinery only: GPU rules cannot fire; it says nothing of GPU miners.")
                print(f"\nbackend: {backend}; {len(chosen)} scenario(s)\n")
                for s in chosen:
                    workdir = Path(tmp) / s.name
                    workdir.mkdir()
                    print(f"running {s.name}: {s.description} ...", flush=True)
                    result = run_scenario(s, backend, times, workdir, log, args)
                    if backend == "cpu":
                        result.status = REHEARSAL + result.status
                        result.target_met = None
                    results.append(result)
                    print(f"  {result.status}", flush=True)
        failed = [r for r in results if r.status.removeprefix(REHEARSAL).startswith("failed")]
        if failed:
            print(f"\nlast lines of the component/application log ({log_path}):")
            print("\n".join(log_path.read_text(errors="replace").splitlines()[-30:]))
    table = markdown_table(results)
    print("\n" + table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "machine": {"python": platform.python_version(), "platform": platform.platform(), **facts},
        "gpu_backend": backend,
        "notes": notes,
        "timing": asdict(times),
        "detect_interval_seconds": DETECT_INTERVAL,
        "results": [asdict(r) for r in results],
    }
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nresults written to {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
