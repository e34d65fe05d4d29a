"""``bertsilicon.save(model, path)`` / ``bertsilicon.load(path)``: an optimized model as a directory, loaded
without calibration in milliseconds.

An artifact directory holds:

* ``config.json``: the Hugging Face config (and the tokenizer's files, when one is given or the model's vocabulary
  is the built-in uncased WordPiece);
* ``bertsilicon.json``: the manifest: format version, package version, the HF class, the ``optimize`` arguments,
  per layer its class and GEMM precisions, per GEMM the prepared tensors it holds, where it was prepared (CPU
  kernel path and features, or GPU architecture), the tensor file's SHA-256, and the optimize report;
* ``model.safetensors``: every tensor the optimized model reads: the prepared GEMM operands (int8 weights, their
  scales and fp32 biases, SmoothQuant factors, 16-bit weights and biases, concatenated qkv copies) and the other
  weights (embeddings, LayerNorms, heads). The fp32 GEMM weights a prepared copy replaced are not stored.

Nothing is pickled. Nothing CPU-dependent is stored: weight packs and one-call layer plans are made at first use
for the CPU at hand, so an artifact prepared on an AVX-512 VNNI / BF16 CPU runs on an AVX2 one (the report says on
which kernel path it was prepared and on which it runs).

:func:`load` builds the HF model's skeleton on the ``meta`` device (no memory, no initialisation), gives it the
saved tensors (views of a memory-mapped file, :mod:`.tensor_file`), and builds each fused layer from its saved
prepared tensors (:class:`~bertsilicon.models.layers.PreparedLinear`'s ``prepared``): the same tensors, the same
kernels, so its outputs are bit-identical (``torch.equal``) to the saved model's on the same machine. The GEMM
weights it replaced stay ``meta`` tensors: the loaded model holds no fp32 copy of them, ``restore`` on it is an
error, and calls that need the original layers (training mode, ``output_attentions``, gradients) are not served.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Union

import torch
from torch import nn

from .. import __version__
from ..backends import routing
from . import tensor_file
from .encoder import FusedEncoder
from .optimize import STATE, adapter_for, cpu_kernels_line, install, weight_bytes
from .report import LayerReport, OptimizeReport
from .tensor_file import ArtifactError

__all__ = ["save", "load", "ArtifactError", "FORMAT_VERSION", "MANIFEST", "TENSORS"]

FORMAT = "bertsilicon-artifact"
FORMAT_VERSION = 1
MANIFEST = "bertsilicon.json"
TENSORS = "model.safetensors"
_DERIVED_AT_LOAD = ("weight_fp16_in_fp32",)  # depends on the CPU (fp16 arithmetic or not): made by load


def _optimized_parts(model: nn.Module):
    """``(adapter, base, fused encoder)`` of a model :func:`bertsilicon.optimize` fused, else a clear error."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module optimized by bertsilicon.optimize, got {type(model).__name__}")
    state = getattr(model, STATE, None)
    if state is None:
        raise ValueError("save: this model was not optimized; call bertsilicon.optimize(model, precision=...) first "
                         "(a plain model is saved with its own save_pretrained)")
    if "inner" in state:
        raise ValueError(f"save: {type(model).__name__} is a wrapper; save the Hugging Face model inside it (for a "
                         "SentenceTransformer: model[0].auto_model)")
    if state.get("refused"):
        raise ValueError(f"save: optimize kept this model's layers ({model.bertsilicon_report.refused}): nothing to save")
    adapter = adapter_for(model)
    base = state["base"] if "base" in state else adapter.base_model(model)
    return adapter, base, getattr(base, adapter.encoder_attr)


def _prepared_on(device: torch.device) -> dict:
    """Where the prepared tensors were made: the CPU kernel path and features, or the GPU architecture."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return {"device": "cuda", "arch": f"sm_{major}{minor}", "name": torch.cuda.get_device_name(device)}
    cpu = routing.cpu_backend()
    if cpu is None:
        return {"device": "cpu", "kernel_path": "reference (C++ extension not built)", "features": []}
    features = cpu.cpu_features()
    return {"device": "cpu", "kernel_path": cpu.kernel_path(),
            "features": sorted(k for k, v in features.items() if v is True)}


def save(model: nn.Module, path: Union[str, Path], tokenizer=None) -> Path:
    """Write the optimized ``model`` (from :func:`bertsilicon.optimize`) as an artifact directory at ``path``
    (created; an existing artifact there is replaced; see the module docstring). ``tokenizer``: saved beside it
    (default: the built-in uncased WordPiece when the model's vocabulary is its 30522 tokens). Returns the path."""
    adapter, base, encoder = _optimized_parts(model)
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"save: {path} exists and is not a directory")
    report: OptimizeReport = model.bertsilicon_report
    device = next(base.parameters()).device
    prefix = _encoder_prefix(model, base, adapter)

    dropped = {id(t) for layer in encoder.layer for lin in layer.prepared_sources
               for t in (lin.weight, lin.bias) if t is not None}
    tensors, aliases, dropped_names, seen = {}, {}, [], {}
    for name, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        if name.rsplit(".", 1)[-1] in _DERIVED_AT_LOAD:
            continue
        if id(t) in dropped:
            dropped_names.append(name)
        elif id(t) in seen:
            aliases[name] = seen[id(t)]  # tied weights: stored once
        else:
            seen[id(t)] = name
            tensors[name] = t
    layers = []
    for i, layer in enumerate(encoder.layer):
        layers.append({"class": type(layer).__name__, "gemms": dict(layer.gemm_precision),
                       "one_call": layer.one_call, "bf16_attention": getattr(layer, "bf16_attention", None),
                       "prepared": {g: sorted(n for n, b in layer._modules[g].named_buffers()
                                              if n not in _DERIVED_AT_LOAD)
                                    for g in layer.gemm_precision}})
    optimize_args = {"precision": report.precision, "backend": report.backend, "unpad": report.unpad,
                     "smooth": report.smooth, "error_budget": report.error_budget, "cuda_graphs": report.cuda_graphs,
                     "calibration": report.calibration}
    path.mkdir(parents=True, exist_ok=True)
    for stale in (MANIFEST, TENSORS):
        (path / stale).unlink(missing_ok=True)
    model.config.save_pretrained(path)
    if tokenizer is None and getattr(model.config, "vocab_size", None) == 30522:
        from .students import load_tokenizer

        tokenizer = load_tokenizer()
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    digest = tensor_file.write(tensors, path / TENSORS)
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "package_version": __version__,
        "model_class": type(model).__name__, "family": adapter.family, "encoder": prefix,
        "compute_dtype": str(encoder.compute_dtype).replace("torch.", ""),
        "optimize_args": optimize_args, "prepared_on": _prepared_on(device), "layers": layers,
        "tensors": {"file": TENSORS, "sha256": digest, "aliases": aliases, "not_stored": dropped_names},
        "report": report.to_dict(),
    }
    (path / MANIFEST).write_text(json.dumps(manifest, indent=1))  # written last: its presence marks a whole artifact
    return path


def _encoder_prefix(model: nn.Module, base: nn.Module, adapter) -> str:
    """The encoder's module path in ``model`` (``"bert.encoder."``, ``"encoder."``)."""
    base_name = next(n for n, m in model.named_modules() if m is base)
    return f"{base_name + '.' if base_name else ''}{adapter.encoder_attr}."


# ---------------------------------------------------------------------------------------------- #
# load                                                                                           #
# ---------------------------------------------------------------------------------------------- #
def _read_manifest(path: Path) -> dict:
    """The manifest, with the checks that need nothing else: a directory, an artifact, a known format."""
    if not path.is_dir():
        raise ArtifactError(f"load: {path} is not a directory (an artifact is the directory bertsilicon.save wrote)")
    file = path / MANIFEST
    if not file.exists():
        if (path / "config.json").exists():
            raise ArtifactError(f"load: {path} is a plain Hugging Face checkpoint ({MANIFEST} missing), not a bertsilicon "
                                "artifact; make one with `bertsilicon optimize {path} --precision int8 --out DIR` or "
                                "bertsilicon.save(bertsilicon.optimize(model, ...), DIR)".replace("{path}", str(path)))
        raise ArtifactError(f"load: {path} holds no {MANIFEST}: not a bertsilicon artifact (or its save did not finish)")
    try:
        manifest = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"load: {file} is not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"load: {file} is not a bertsilicon artifact manifest (format {manifest.get('format')!r})"
                            if isinstance(manifest, dict) else f"load: {file} is not a JSON object")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ArtifactError(f"load: {file} has format version {version!r}, written by bertsilicon "
                            f"{manifest.get('package_version')}; this bertsilicon ({__version__}) reads format versions "
                            f"up to {FORMAT_VERSION}: upgrade bertsilicon, or save the artifact again with this version")
    return manifest


def _target_device(manifest: dict, device, file: Path) -> torch.device:
    prepared = manifest["prepared_on"]
    if device is None:
        device = "cuda" if prepared["device"] == "cuda" else "cpu"
    device = torch.device(device)
    if prepared["device"] == "cuda" and not torch.cuda.is_available():
        raise ArtifactError(f"load: {file} was prepared on a GPU ({prepared.get('name')}, {prepared.get('arch')}) and "
                            "this machine has no CUDA device; make a CPU artifact from the original checkpoint "
                            "(`bertsilicon optimize MODEL_DIR --precision ... --out DIR` on this machine)")
    if prepared["device"] != device.type:
        raise ArtifactError(f"load: {file} was prepared for {prepared['device']}, not {device.type} (the int8 fallback "
                            "choices and kernels differ between them); make an artifact on that device")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ArtifactError(f"load: device={device} asked, and this machine has no CUDA device")
    return device


def _skeleton(path: Path, manifest: dict) -> nn.Module:
    """The HF model of the manifest's class built from ``config.json`` on the ``meta`` device."""
    import transformers

    cls = getattr(transformers, manifest["model_class"], None)
    if cls is None:
        raise ArtifactError(f"load: {path / MANIFEST} names model class {manifest['model_class']!r}, which this "
                            f"transformers ({transformers.__version__}) does not have")
    try:
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"load: {path / 'config.json'} cannot be read as a Hugging Face config ({exc})") from exc
    with torch.device("meta"):
        model = cls(config)
    return model.eval()


def _assign(model: nn.Module, name: str, t: torch.Tensor) -> None:
    """Put tensor ``t`` where ``name`` is in ``model`` (a parameter keeps being one; requires_grad off)."""
    owner, _, leaf = name.rpartition(".")
    module = model.get_submodule(owner)
    if leaf in module._parameters:
        module._parameters[leaf] = t if isinstance(t, nn.Parameter) else nn.Parameter(t, requires_grad=False)
    else:
        module._buffers[leaf] = t


def load(path: Union[str, Path], device: Union[None, str, torch.device] = None) -> nn.Module:
    """The optimized model saved by :func:`save` at ``path``: the same HF class, ready to call, no calibration;
    outputs bit-identical to the saved model's on the same machine. ``device``: where to put it (default: the
    kind it was prepared on). Every check runs before anything is built; a bad artifact is an
    :class:`ArtifactError` naming the file and the problem (see the module docstring)."""
    path = Path(path)
    manifest = _read_manifest(path)
    file = path / manifest["tensors"]["file"]
    device = _target_device(manifest, device, file)
    stored = tensor_file.read(file, manifest["tensors"]["sha256"])
    model = _skeleton(path, manifest)
    adapter = adapter_for(model)
    base = adapter.base_model(model)
    encoder = getattr(base, adapter.encoder_attr)
    prefix = manifest["encoder"]
    specs = manifest["layers"]
    if len(specs) != len(encoder.layer):
        raise ArtifactError(f"load: {path / MANIFEST} describes {len(specs)} layers, config.json {len(encoder.layer)}")

    expected = dict(model.named_parameters(remove_duplicate=False))
    expected.update(model.named_buffers(remove_duplicate=False))
    not_stored, aliases = set(manifest["tensors"]["not_stored"]), manifest["tensors"]["aliases"]
    prepared_names = {f"{prefix}layer.{i}.{g}.{n}" for i, s in enumerate(specs) for g, names in s["prepared"].items()
                      for n in names}
    wanted = {n for n in expected if n not in not_stored and n not in aliases} | prepared_names
    missing = sorted(wanted - set(stored))
    if missing:
        raise ArtifactError(f"load: {file} lacks {len(missing)} tensor(s) the model needs: {', '.join(missing[:5])}"
                            f"{' ...' if len(missing) > 5 else ''}; the file is incomplete or belongs to another model")
    for name in sorted(wanted - prepared_names):
        meta = expected[name]
        if tuple(stored[name].shape) != tuple(meta.shape):
            raise ArtifactError(f"load: tensor {name!r} in {file} has shape {tuple(stored[name].shape)}; config.json "
                                f"gives {tuple(meta.shape)}")

    def placed(name):
        return stored[name].to(device)

    for name in sorted(wanted - prepared_names):
        _assign(model, name, placed(name))
    for name, target in aliases.items():  # tied weights: the same tensor object again
        is_param = isinstance(expected.get(target), nn.Parameter)
        _assign(model, name, model.get_parameter(target) if is_param else model.get_buffer(target))

    report = _report(manifest)
    compute_dtype = getattr(torch, manifest["compute_dtype"])
    args = manifest["optimize_args"]
    fused = []
    for i, (layer, spec) in enumerate(zip(encoder.layer, specs)):
        if spec["class"] != adapter.layer_class.__name__:
            raise ArtifactError(f"load: {path / MANIFEST} layer {i} is a {spec['class']}; this model's layers are "
                                f"{adapter.layer_class.__name__}")
        here = f"{prefix}layer.{i}."
        prepared = {g: {n: placed(here + f"{g}.{n}") for n in names} for g, names in spec["prepared"].items()}
        f = adapter.layer_class(layer, adapter.layer_parts(layer, model.config), spec["gemms"], compute_dtype,
                                backend=args["backend"], prepared=prepared)
        f.one_call = spec["one_call"]
        if spec.get("bf16_attention") is not None:
            f.bf16_attention = spec["bf16_attention"]
        fused.append(f)
    _describe_here(report, fused, device, manifest, path)
    if device.type == "cpu" and all(entry.call == "one C++ call" for entry in report.layers):
        # the layers' one-call plans hold packed copies of every GEMM weight (made by _describe_here's call_path):
        # the mapped pages they were packed from need not stay resident
        tensor_file.release_pages(t for layer in fused for g in layer.gemm_precision
                                  for t in layer._modules[g].prepared_tensors().values())
    graphs = bool(args["cuda_graphs"]) and device.type == "cuda"
    why = f"it was loaded from the artifact {path}"
    new_encoder = install(model, base, adapter, FusedEncoder(encoder, fused, adapter, report, compute_dtype,
                                                             args["unpad"], graphs),
                          {"artifact": str(path), "originals_gone": why})
    new_encoder.originals_gone = why
    model.requires_grad_(False)  # inference only (the meta placeholders too): a call outside no_grad runs the same path
    report.weights = weight_bytes(base, fused)
    report.notes.append("the artifact's tensors are memory-mapped: a page is resident only once read (the embedding "
                        "table's for the tokens looked up; the GEMM weights' pages are released once packed)")
    model.bertsilicon_report = report
    return model


def _report(manifest: dict) -> OptimizeReport:
    """The optimize report as saved (its layers rebuilt), to be completed by :func:`_describe_here`."""
    fields = dict(manifest["report"])
    fields["layers"] = [LayerReport(**entry) for entry in fields.get("layers", [])]
    from collections import Counter

    fields["runtime_fallbacks"] = Counter()
    fields["recomputed_backward"] = 0
    fields["weights"] = {}
    return OptimizeReport(**fields)


def _describe_here(report: OptimizeReport, fused: list, device: torch.device, manifest: dict, path: Path) -> None:
    """How the loaded layers run on this machine (calls, backends, cpu kernels) and where they were prepared."""
    for entry, layer in zip(report.layers, fused):
        entry.call = layer.call_path(device)
    probe = torch.zeros(4, fused[0].hidden, dtype=fused[0].compute_dtype, device=device)
    report.backends_used = fused[0].backends_used(probe)
    if device.type == "cpu" and "cpu" in report.backends_used.values():
        report.cpu_kernels = cpu_kernels_line(fused, fused[0].compute_dtype)
    then, now = manifest["prepared_on"], _prepared_on(device)
    where = then.get("kernel_path") or then.get("arch")
    here = now.get("kernel_path") or now.get("arch")
    note = (f"loaded from the artifact {path} (bertsilicon {manifest['package_version']}, no calibration): prepared on "
            f"the {where} path, runs on the {here} path")
    if where != here:
        note += " (weights re-packed for this CPU at first use)" if device.type == "cpu" else ""
        if any(p == "bf16" for e in report.layers for p in e.gemms.values()) and not routing.native_bf16_gemm(
                device, report.backend):
            note += "; its bf16 GEMMs (int8 fallbacks chosen where bf16 was native) run without native bf16 here"
    report.notes.append(note)
