"""What a result was measured on: CPU model and flags, cores, GPU, library versions, git commit, load.

The one provenance writer of the project: every benchmark and study records :func:`machine_info` with its
results and heads its Markdown with :func:`describe` (the end-to-end report with ``report.machine_lines``).
"""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

# The flags that decide which kernels can run (shown in the Markdown; the JSON keeps all of them).
SIMD_PREFIXES = ("sse4", "avx", "fma", "f16c", "amx", "vnni", "bmi2")
LIBRARIES = ("torch", "transformers", "onnxruntime", "onnx", "triton", "numpy", "tokenizers", "bertsilicon")


def _cpuinfo(path: str = "/proc/cpuinfo") -> dict:
    """Model name, flags and physical core count from /proc/cpuinfo (Linux; empty elsewhere)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return {"model": platform.processor() or platform.machine(), "flags": [], "physical_cores": None}
    model, flags, cores = None, [], set()
    phys = core = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name" and model is None:
            model = value
        elif key == "flags" and not flags:
            flags = value.split()
        elif key == "physical id":
            phys = value
        elif key == "core id":
            core = value
        elif not key and phys is not None:  # blank line ends one logical CPU
            cores.add((phys, core))
            phys = core = None
    if phys is not None:
        cores.add((phys, core))
    return {"model": model, "flags": flags, "physical_cores": len(cores) or None}


def simd_flags(flags) -> list[str]:
    return [f for f in flags if f.startswith(SIMD_PREFIXES)]


def _version(name: str):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


COMMIT_ENV = "BERTSILICON_COMMIT"


def git_commit(repo: Path = Path(__file__).resolve().parents[2]) -> dict:
    """``{"commit": short hash, "dirty": tracked files changed}`` of the checkout. A copy of the tree without
    ``.git`` names its commit in ``BERTSILICON_COMMIT`` (then ``dirty`` is None: unknown)."""
    if os.environ.get(COMMIT_ENV):
        return {"commit": os.environ[COMMIT_ENV], "dirty": None}

    def git(*args):
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10).stdout.strip()
    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": dirty if commit else None}


def _gpu():
    import torch

    if not torch.cuda.is_available():
        return None
    return {"name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(),
            "capability": ".".join(map(str, torch.cuda.get_device_capability(0))), "cuda": torch.version.cuda}


def _bertsilicon_cpu_features():
    try:  # through the cpu backend: it applies BERTSILICON_HIDE_CPU_FEATURES / BERTSILICON_ISA at import
        from bertsilicon.backends import cpu as _cpu
        return _cpu.cpu_features()
    except (ImportError, AttributeError, TypeError):
        return None


def load_average():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info(threads: int) -> dict:
    """Everything needed to read a result later: see the module docstring. ``threads`` is the thread count
    the run fixed for torch and ONNX Runtime."""
    cpu = _cpuinfo()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": {"model": cpu["model"], "logical_cores": os.cpu_count(), "usable_cores": usable,
                "physical_cores": cpu["physical_cores"], "simd_flags": simd_flags(cpu["flags"]),
                "flags": cpu["flags"], "bertsilicon_cpu_features": _bertsilicon_cpu_features()},
        "gpu": _gpu(),
        "threads": threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in LIBRARIES},
        "git": git_commit(),
        "load_average_start": load_average(),
    }


def commit_text(info: dict) -> str:
    """``abc1234``, ``abc1234 (uncommitted changes)`` or ``unknown``, from :func:`machine_info`."""
    git = info.get("git") or {}
    if not git.get("commit"):
        return "unknown"
    return git["commit"] + (" (uncommitted changes)" if git.get("dirty") else "")


def versions_text(info: dict) -> str:
    """``torch 2.x, transformers 4.y, ..., Python 3.z``: the installed libraries of :func:`machine_info`."""
    return ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v) + f", Python {info['python']}"


def describe(info: dict) -> str:
    """One Markdown line of provenance from :func:`machine_info`: commit, date, CPU, threads, SIMD flags, GPU,
    versions, and the load averages when recorded (``load_average_end`` is set by the caller at the end)."""
    cpu, gpu = info["cpu"], info.get("gpu")
    gpu_text = (f"GPU {gpu['name']} (capability {gpu['capability']}, CUDA {gpu.get('cuda')})" if gpu else "no GPU")
    load = "".join(f"; load average {when} {info[key]}" for when, key in (("at start", "load_average_start"),
                                                                          ("at end", "load_average_end"))
                   if info.get(key))
    return (f"commit {commit_text(info)}, {info['date_utc']}; CPU {cpu['model']}, threads {info['threads']} of "
            f"{cpu['usable_cores']} usable cores, SIMD {' '.join(cpu['simd_flags']) or 'n/a'}; {gpu_text}; "
            f"{versions_text(info)}{load}.")
