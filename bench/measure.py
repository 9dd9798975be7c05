"""What a timed run measures and how: forward hooks that split a call into prefill, setup and decode steps
(``ForwardClock``, ``Run``, ``run_variant``), the order runs take (``interleaved``: one whole call after
another, or in lockstep, one forward each in turn), and the machine around it (other processes' load,
threads)."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bench.config import QuietSpec
from bench.variants import Variant
from vreason.memory import synchronize


class ForeignLoad:
    """CPU time that other processes (and the hypervisor, as steal) took while the benchmark ran: a
    busy neighbour on a 2-core machine moves timings far more than anything measured here."""

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float, float]:
        hz = os.sysconf("SC_CLK_TCK")
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
        own = sum(os.times()[:4])  # this process and its finished children
        return (user + nice + system + irq + softirq) / hz, steal / hz, own, time.perf_counter()

    def summary(self) -> dict[str, float]:
        busy, steal, own, wall = (b - a for a, b in zip(self.start, self._sample(), strict=True))
        other = max(0.0, busy - own)
        return {
            "wall_s": wall,
            "other_processes_core_s": other,
            "other_processes_share": other / (wall * (os.cpu_count() or 1)),
            "steal_s": steal,
        }


class OwnClock:
    """A run's own time, wall-clock and process CPU. Alone (``turns=None``) it is ``time.perf_counter`` and
    ``time.process_time``. In lockstep it counts only the run's own turns: ``yield_turn`` (called before
    each forward) stops it, waits while the other runs take theirs, and starts it again."""

    def __init__(self, turns: Turns | None = None, name: str = "") -> None:
        self.turns, self.name = turns, name
        self._wall = self._cpu = 0.0
        self._since: tuple[float, float] | None = None

    def start(self) -> None:
        """Begin the run: in lockstep, once its first turn has come."""
        if self.turns is not None:
            self.turns.wait(self.name)
        self._since = (time.perf_counter(), time.process_time())

    def _stop(self) -> None:
        wall, cpu = self._since
        self._wall += time.perf_counter() - wall
        self._cpu += time.process_time() - cpu  # the other runs' threads are waiting: this is our CPU

    def yield_turn(self) -> None:
        if self.turns is not None:
            self._stop()
            self.turns.pass_on(self.name)
            self._since = (time.perf_counter(), time.process_time())

    def now(self) -> float:
        if self.turns is None:
            return time.perf_counter()
        return self._wall + time.perf_counter() - self._since[0]

    def cpu_now(self) -> float:
        if self.turns is None:
            return time.process_time()
        return self._cpu + time.process_time() - self._since[1]


class Turns:
    """Runs in lockstep, one thread each: exactly one works at a time, and the turn passes at every
    forward, so each run's steps alternate with the others' and a slow drift of the machine's speed (a
    neighbour on the host's memory bus, the clock) falls on every variant alike instead of on whichever
    ran in that minute."""

    def __init__(self, names: list[str]) -> None:
        self._order = list(names)  # the head holds the turn
        self._changed = threading.Condition()

    def wait(self, name: str) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._order[0] == name)

    def pass_on(self, name: str) -> None:
        with self._changed:
            self._order.append(self._order.pop(0))
            self._changed.notify_all()
            self._changed.wait_for(lambda: self._order[0] == name)

    def leave(self, name: str) -> None:
        with self._changed:
            self._order.remove(name)
            self._changed.notify_all()


class ForwardClock:
    """Hooks on the top-level model: timestamps (``clock``'s) of every forward's start, the end of the first
    (prefill) forward, and whether each forward ran with autograd on. Forwards of other threads (the other
    runs of a lockstep round, on the same model) are not this run's and are ignored. The hooks take no
    keyword arguments: a forward that began while another run's hooks were registered may still call them
    after that run removed them, and torch then calls them without."""

    def __init__(
        self,
        model: torch.nn.Module,
        on_decode_start: Callable[[], None] | None = None,
        clock: OwnClock | None = None,
    ) -> None:
        self.model, self.on_decode_start = model, on_decode_start
        self.clock = clock or OwnClock()
        self.thread = threading.get_ident()
        self.device = model.get_output_embeddings().weight.device
        self.starts: list[float] = []
        self.cpu_starts: list[float] = []  # process CPU time: what the run computed, not how long it waited
        self.ends: list[float] = []
        self.grad: list[bool] = []

    def __enter__(self) -> ForwardClock:
        self._handles = [
            self.model.register_forward_pre_hook(self._pre, prepend=True),
            self.model.register_forward_hook(self._post),
        ]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()

    def _pre(self, module, args) -> None:
        if threading.get_ident() != self.thread:
            return
        if self.starts:  # a decode forward; the sync makes the timestamp mean "previous step done"
            synchronize(self.device)
        self.clock.yield_turn()
        self.starts.append(self.clock.now())
        self.cpu_starts.append(self.clock.cpu_now())
        self.grad.append(torch.is_grad_enabled())
        if len(self.starts) == 2 and self.on_decode_start is not None:
            self.on_decode_start()

    def _post(self, module, args, output) -> None:
        if threading.get_ident() != self.thread:
            return
        synchronize(self.device)
        self.ends.append(self.clock.now())

    @property
    def prefill_end(self) -> float:
        return self.ends[0]


@dataclass
class Run:
    """One call of one variant. Times in seconds."""

    variant: str
    batch: int
    new_tokens: int
    prefill_s: float  # call start -> end of the prefill forward
    setup_s: float  # end of prefill -> start of the first decode forward (token 1, Lite eviction, attach)
    decode_s: float  # start of the first decode forward -> end of the call
    decode_cpu_s: float  # process CPU time over the same span (with one intra-op thread: immune to
    # other processes taking the core, not to their use of memory bandwidth)
    call_cpu_s: float  # process CPU time of the whole call
    plain_step_s: float | None  # median interval between decode-forward starts, forward without autograd
    plain_gap_s: float | None  # median time from the end of such a forward to the next one's start: the
    # decode loop's own work per token (sampling, bookkeeping), without the model
    opt_step_s: float | None  # the same for optimisation steps (forward with autograd + backward + AdamW)
    optimisation_steps: int  # per sample
    faults: int
    kv_cache_bytes: int
    other_load: float | None = None  # share of the machine other processes used during the run
    base_bytes: int | None = None  # CUDA only: memory allocated before the call (weights, inputs)
    peak_delta_bytes: int | None = None  # CUDA only (CPU: fresh subprocess, see measure_memory)
    decode_peak_delta_bytes: int | None = None
    token_ids: list[list[int]] = field(default_factory=list)

    @property
    def call_s(self) -> float:
        """The whole call (``generate`` or ``Decoder.generate``): prefill, setup and decoding."""
        return self.prefill_s + self.setup_s + self.decode_s

    @property
    def per_token_s(self) -> float:
        return self.decode_s / (self.new_tokens - 1)

    @property
    def cpu_per_token_s(self) -> float:
        return self.decode_cpu_s / (self.new_tokens - 1)

    @property
    def robust_per_token_s(self) -> float:
        """Per-token time from the median plain and median optimisation step: insensitive to a burst
        of load from other processes during a few steps."""
        n_opt = self.optimisation_steps if self.opt_step_s is not None else 0
        n_plain = self.new_tokens - 1 - n_opt
        return (n_plain * (self.plain_step_s or 0.0) + n_opt * (self.opt_step_s or 0.0)) / (
            self.new_tokens - 1
        )

    @property
    def decode_tokens_per_s(self) -> float:
        return self.batch * (self.new_tokens - 1) / self.decode_s


def run_variant(
    model,
    variant: Variant,
    inputs: Mapping[str, Tensor],
    new_tokens: int,
    positions: str,
    seed: int = 0,
    on_decode_start: Callable[[], None] | None = None,
    decoder_class: type | None = None,
    controller_class: type | None = None,
    clock: OwnClock | None = None,
) -> Run:
    """Run ``variant`` once and time it (by ``clock``: alone, or one of a lockstep round); fails if any
    sample made other than ``new_tokens`` tokens."""
    from transformers import DynamicCache

    from vreason.engine import Decoder, cache_argument, cache_bytes
    from vreason.sampling import SamplingConfig

    if new_tokens < 2:
        raise SystemExit(
            "bench: max_new_tokens must be >= 2 (one prefill token and at least one decode step)"
        )
    device = model.get_output_embeddings().weight.device
    inputs = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in inputs.items()}
    batch = inputs["input_ids"].shape[0]
    if not variant.uses_generate:
        sampling = SamplingConfig(do_sample=False, max_new_tokens=new_tokens)
        # An empty EOS list: no token ends a sample, so every run makes exactly new_tokens tokens.
        decoder = (decoder_class or Decoder)(
            model, variant.method(positions, controller_class), sampling, eos_token_id=[]
        )
    cuda = device.type == "cuda"
    peaks: dict[str, int] = {}

    def decode_started() -> None:
        if cuda:
            peaks["prefill"] = torch.cuda.max_memory_allocated(device)
            peaks["decode_base"] = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        if on_decode_start is not None:
            on_decode_start()

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    synchronize(device)
    load = ForeignLoad() if Path("/proc/stat").is_file() else None
    own = clock or OwnClock()
    own.start()
    with ForwardClock(model, decode_started, own) as clock:
        start, cpu_start = own.now(), own.cpu_now()
        if variant.uses_generate:
            cache = DynamicCache(config=model.config)  # ours, to measure it afterwards
            with torch.no_grad():
                out = model.generate(
                    **inputs,
                    do_sample=False,
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    **{cache_argument(model): cache},
                )
            token_ids = out[:, inputs["input_ids"].shape[1] :].tolist()
            optimised, faults, kv_bytes = [0], 0, cache_bytes(cache)
        else:
            traces = decoder.generate(inputs, seed=seed)
            token_ids = [t.token_ids for t in traces]
            optimised = [sum(t.optimized) for t in traces]
            faults = sum(len(t.faults) for t in traces)
            kv_bytes = round(traces[0].kv_cache_mb * 2**20)
        synchronize(device)
        end, cpu_end = own.now(), own.cpu_now()
    lengths = {len(ids) for ids in token_ids}
    if lengths != {new_tokens} or len(clock.starts) != new_tokens:
        raise RuntimeError(
            f"bench: {variant.name} made {sorted(lengths)} tokens in {len(clock.starts)} forwards, "
            f"expected {new_tokens} (did a sample stop early?)"
        )
    steps = [b - a for a, b in zip(clock.starts[1:], [*clock.starts[2:], end], strict=True)]
    gaps = [b - a for a, b in zip(clock.ends[1:], [*clock.starts[2:], end], strict=True)]
    plain_gaps = [g for g, grad in zip(gaps, clock.grad[1:], strict=True) if not grad]
    plain = [s for s, grad in zip(steps, clock.grad[1:], strict=True) if not grad]
    opt = [s for s, grad in zip(steps, clock.grad[1:], strict=True) if grad]
    run = Run(
        variant=variant.name,
        batch=batch,
        new_tokens=new_tokens,
        prefill_s=clock.prefill_end - start,
        setup_s=clock.starts[1] - clock.prefill_end,
        decode_s=end - clock.starts[1],
        decode_cpu_s=cpu_end - clock.cpu_starts[1],
        call_cpu_s=cpu_end - cpu_start,
        plain_step_s=statistics.median(plain) if plain else None,
        plain_gap_s=statistics.median(plain_gaps) if plain_gaps else None,
        opt_step_s=statistics.median(opt) if opt else None,
        optimisation_steps=max(optimised),
        faults=faults,
        kv_cache_bytes=kv_bytes,
        other_load=load.summary()["other_processes_share"] if load is not None else None,
        token_ids=token_ids,
    )
    if cuda:
        run.base_bytes = base
        run.peak_delta_bytes = max(peaks["prefill"], torch.cuda.max_memory_allocated(device)) - base
        run.decode_peak_delta_bytes = torch.cuda.max_memory_allocated(device) - peaks["decode_base"]
    return run


@contextmanager
def intra_op_threads(threads: int | None):
    """``torch.set_num_threads`` for the benchmark, restored afterwards (the caller may be a test)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def machine_description(device: str) -> dict[str, Any]:
    cpu = platform.processor() or "?"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    import transformers

    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def wait_for_quiet(spec: QuietSpec) -> float:
    """Seconds waited until other processes used at most ``spec.max_other_cores`` over one window."""
    if spec.max_wait_s <= 0 or not Path("/proc/stat").is_file():
        return 0.0
    start = time.perf_counter()
    while True:
        load = ForeignLoad()
        time.sleep(spec.window_s)
        summary = load.summary()
        if summary["other_processes_core_s"] / summary["wall_s"] <= spec.max_other_cores:
            return time.perf_counter() - start
        if time.perf_counter() - start >= spec.max_wait_s:
            return time.perf_counter() - start


def begin(
    device: str, command: str, out_dir: Path, log: Callable[[str], None]
) -> tuple[dict[str, Any], ForeignLoad | None, float]:
    """A benchmark's start: the machine (library versions included) logged with the command, ``out_dir``
    made, and other processes' load counted from here. Returns (machine, load, start time)."""
    machine = machine_description(device)
    log(f"command: {command}")
    log("machine: " + json.dumps(machine))
    out_dir.mkdir(parents=True, exist_ok=True)
    return machine, ForeignLoad() if Path("/proc/stat").is_file() else None, time.perf_counter()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def median_load(runs: list[Run]) -> float | None:
    """The median share of the machine that other processes used during ``runs`` (None off Linux)."""
    loads = [r.other_load for r in runs if r.other_load is not None]
    return median(loads) if loads else None


def warm_up(model, inputs: Mapping[str, Tensor], new_tokens: int, positions: str) -> None:
    """One untimed run of ``generate`` and of Full k=1 (autograd, AdamW): code pages, thread pools, caches."""
    for variant in (Variant("generate", uses_generate=True), Variant("full_k1", step_size=1)):
        run_variant(model, variant, inputs, new_tokens, positions)


def interleaved(
    variants: list[Variant],
    repeats: int,
    one_run: Callable[..., Run],
    lockstep: bool = False,
    before_round: Callable[[], None] | None = None,
) -> dict[str, list[Run]]:
    """``repeats`` rounds over all variants, the order rotated by one each round. One after another, each
    call is ``one_run(variant)``; in ``lockstep`` the round's calls run side by side, one thread each,
    taking turns at every forward (``Turns``), and each is ``one_run(variant, clock=OwnClock)``.
    ``before_round`` runs before each lockstep round (waiting for a quiet machine, say)."""
    runs: dict[str, list[Run]] = {v.name: [] for v in variants}
    for r in range(repeats):
        shift = r % len(variants)
        order = variants[shift:] + variants[:shift]
        if not lockstep:
            for variant in order:
                runs[variant.name].append(one_run(variant))
            continue
        if before_round is not None:
            before_round()
        for variant, run in zip(order, lockstep_round(order, one_run), strict=True):
            runs[variant.name].append(run)
    return runs


def lockstep_round(order: list[Variant], one_run: Callable[..., Run]) -> list[Run]:
    """One call of each variant in ``order``, in lockstep; re-raises the first failure."""
    turns = Turns([v.name for v in order])
    results: dict[str, Run | BaseException] = {}
    threads = torch.get_num_threads()  # torch's intra-op setting is per thread: carry it over

    def call(variant: Variant) -> None:
        torch.set_num_threads(threads)
        try:
            results[variant.name] = one_run(variant, clock=OwnClock(turns, variant.name))
        except BaseException as error:  # re-raised in the caller's thread below
            results[variant.name] = error
        finally:
            turns.leave(variant.name)

    workers = [threading.Thread(target=call, args=(v,), name=f"lockstep-{v.name}") for v in order]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    for variant in order:
        if isinstance(results[variant.name], BaseException):
            raise results[variant.name]
    return [results[v.name] for v in order]


def timed_run(
    model,
    variant: Variant,
    inputs: Mapping[str, Tensor],
    new_tokens: int,
    positions: str,
    seed: int,
    quiet: QuietSpec,
    label: str,
    log: Callable[[str], None],
    clock: OwnClock | None = None,
) -> Run:
    """``run_variant`` after waiting for other processes to leave the cores (CPU only; in lockstep,
    ``clock``, the round waits instead), logged in one line."""
    cuda = model.get_output_embeddings().weight.device.type == "cuda"
    waited = 0.0 if cuda or clock is not None else wait_for_quiet(quiet)
    run = run_variant(model, variant, inputs, new_tokens, positions, seed=seed, clock=clock)
    log(
        f"[{label}] b={run.batch} {variant.name:9s} {run.per_token_s * 1e3:8.2f} ms/token  "
        f"prefill {run.prefill_s:6.2f} s  opt steps {run.optimisation_steps}  "
        f"other load {run.other_load or 0:.2f} (waited {waited:.0f} s)"
    )
    return run
