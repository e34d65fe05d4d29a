"""The model side of ``encode``: which model, how it pools, and one padding-free forward per batch.

* :func:`resolve` turns the user's choices into an :class:`EncoderConfig` (everything that decides a vector),
  reading a sentence-transformers directory's ``modules.json``, ``1_Pooling/config.json`` and
  ``sentence_bert_config.json`` for the pooling, the normalization and the length limit. Cheap: no weights load.
* :class:`Embedder` loads the model once (``bertsilicon.optimize(model, precision, unpad=True)``) and maps
  windows of token ids to pooled vectors.

Vectors are a function of the text alone: every GEMM runs on the real tokens only (the packed, padding-free
path), the cpu kernels compute each token row the same way whatever rows share the call, and pooling sums one
text's token vectors in float64 in token order. So batch composition, the token budget and padding change no bit.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
POOLINGS = ("mean", "cls", "max", "mean_sqrt_len")
LONG_MODES = ("truncate", "chunk")
BUILTIN_MODEL = "minilm-l6"
ARTIFACT_FILE = "bertsilicon.json"
CHUNK_OVERLAP = 4  # --long chunk: consecutive windows share 1/CHUNK_OVERLAP of a window's tokens

# sentence-transformers' pooling flags -> our pooling names
_ST_POOLING = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
               "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len"}


class ModelError(ValueError):
    """A model directory or option that ``encode`` cannot use; the message names it and what was expected."""


@dataclass(frozen=True)
class EncoderConfig:
    """Everything that decides a text's vector (a job's identity, and what a Ray actor rebuilds)."""

    model: str            # BUILTIN_MODEL or an absolute directory path
    precision: str        # one of PRECISIONS, or "artifact" (a saved optimized model keeps its own)
    pooling: str          # one of POOLINGS
    normalize: bool       # unit L2 norm at the end
    max_length: int       # tokens per window, special tokens included
    long: str             # one of LONG_MODES

    def to_dict(self) -> dict:
        return asdict(self)


def model_dir(model: Optional[str]) -> Path:
    from ..models.students import minilm_path

    if model is None or model == BUILTIN_MODEL:
        return minilm_path()
    path = Path(model)
    if not path.is_dir():
        raise ModelError(f"model {model!r}: not a directory; expected '{BUILTIN_MODEL}' (the built-in MiniLM), a "
                         "Hugging Face or sentence-transformers model directory, or a saved bertsilicon model")
    if not (path / "config.json").is_file() and not (path / ARTIFACT_FILE).is_file():
        raise ModelError(f"model {model!r}: no config.json (a Hugging Face model) nor {ARTIFACT_FILE} (a saved "
                         "bertsilicon model) in it")
    return path.resolve()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"model file {path}: not readable JSON ({exc})") from None


def _st_settings(path: Path) -> dict:
    """Pooling, normalize and max_length of a sentence-transformers directory (empty for a plain HF one)."""
    if not (path / "modules.json").is_file():
        return {}
    out = {"normalize": False}
    for module in _read_json(path / "modules.json"):
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        where = path / module.get("path", "")
        if kind == "Transformer":
            cfg = where / "sentence_bert_config.json"
            if cfg.is_file() and _read_json(cfg).get("max_seq_length"):
                out["max_length"] = int(_read_json(cfg)["max_seq_length"])
        elif kind == "Pooling":
            flags = _read_json(where / "config.json")
            modes = [name for key, name in _ST_POOLING.items() if flags.get(key)]
            other = [k for k, v in flags.items() if k.startswith("pooling_mode_") and v and k not in _ST_POOLING]
            if len(modes) != 1 or other:
                raise ModelError(f"model {path}: pooling {sorted(modes + other)} in {where / 'config.json'}; encode "
                                 f"supports exactly one of {POOLINGS}")
            out["pooling"] = modes[0]
        elif kind == "Normalize":
            out["normalize"] = True
        else:
            raise ModelError(f"model {path}: module {module.get('type')!r} ({module.get('path')}) is not supported "
                             "by encode (Transformer, Pooling and Normalize are)")
    return out


def resolve(model: Optional[str] = None, precision: Optional[str] = None, pooling: Optional[str] = None,
            normalize: Optional[bool] = None, max_length: Optional[int] = None,
            long: str = "truncate") -> EncoderConfig:
    """The :class:`EncoderConfig` of the user's choices; ``None`` means: what the model directory says
    (sentence-transformers config), else mean pooling, no normalization, the model's position limit, int8."""
    path = model_dir(model)
    artifact = (path / ARTIFACT_FILE).is_file()
    if artifact and precision is not None:
        raise ModelError(f"model {str(path)!r} is a saved optimized model with its own precision; leave precision "
                         f"unset (got {precision!r})")
    if not artifact and precision is None:
        precision = "int8"
    if not artifact and precision not in PRECISIONS:
        raise ModelError(f"precision={precision!r} is unknown; expected one of {PRECISIONS}")
    if pooling is not None and pooling not in POOLINGS:
        raise ModelError(f"pooling={pooling!r} is unknown; expected one of {POOLINGS}")
    if long not in LONG_MODES:
        raise ModelError(f"long={long!r} is unknown; expected one of {LONG_MODES}")
    st = _st_settings(path)
    limit = _position_limit(path)
    if max_length is None:
        max_length = min(st.get("max_length", limit), limit)
    if isinstance(max_length, bool) or not isinstance(max_length, int) or not 3 <= max_length <= limit:
        raise ModelError(f"max_length must be an int in [3, {limit}] (the model's position limit), got {max_length!r}")
    return EncoderConfig(model=BUILTIN_MODEL if model in (None, BUILTIN_MODEL) else str(path),
                         precision="artifact" if artifact else precision,
                         pooling=pooling or st.get("pooling", "mean"),
                         normalize=st.get("normalize", False) if normalize is None else bool(normalize),
                         max_length=max_length, long=long)


def _position_limit(path: Path) -> int:
    cfg = _read_json(path / "config.json") if (path / "config.json").is_file() else {}
    limit = int(cfg.get("max_position_embeddings", 512))
    if cfg.get("model_type") in ("roberta", "xlm-roberta", "camembert"):  # positions start at pad_token_id + 1
        limit -= int(cfg.get("pad_token_id", 1)) + 1
    return limit


@contextlib.contextmanager
def torch_threads(n: Optional[int]):
    """torch runs on ``n`` threads inside the block (None: as it is)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _load_artifact(path: Path):
    """A saved optimized model (``bertsilicon.save``), as it was saved: no calibration, its own precision."""
    from ..models.artifact import load

    return load(str(path))


class Embedder:
    """The model of an :class:`EncoderConfig`, loaded once: token-id windows -> pooled vectors.

    ``windows(texts)`` cuts each text into windows of at most ``max_length`` ids (special tokens included);
    ``pool(windows)`` runs them as one padding-free batch and returns ``[n, H]`` float64 pooled (not normalized)
    vectors. The int8 calibration runs on one thread, so every process builds the same int8 model."""

    def __init__(self, config: EncoderConfig):
        from transformers import AutoModel, AutoTokenizer

        import bertsilicon

        self.config = config
        path = model_dir(config.model)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ModelError(f"model {str(path)!r}: no tokenizer could be loaded from it ({exc})") from None
        with torch_threads(1):
            if config.precision == "artifact":
                model = _load_artifact(path)
            else:
                model = AutoModel.from_pretrained(str(path), local_files_only=True, dtype=torch.float32).eval()
                model = bertsilicon.optimize(model, config.precision, unpad=True, tokenizer=self.tokenizer)
        self.model = model.eval()
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.prefix, self.suffix = _special_tokens(self.tokenizer)
        self.n_special = len(self.prefix) + len(self.suffix)
        if config.max_length <= self.n_special:
            raise ModelError(f"max_length={config.max_length} leaves no room for text after {self.n_special} "
                             "special tokens")

    def windows(self, texts: Sequence[str]) -> tuple[list[list[list[int]]], int]:
        """Per text, its windows of token ids with special tokens; and how many texts were truncated
        (``long="truncate"``: the first window only) or cut into several windows (``long="chunk"``)."""
        body = self.tokenizer(list(texts), add_special_tokens=False, return_attention_mask=False,
                              return_token_type_ids=False, verbose=False)["input_ids"]
        limit = self.config.max_length - self.n_special
        step = limit - limit // CHUNK_OVERLAP
        def wrap(ids):
            return self.prefix + ids + self.suffix

        out, long_texts = [], 0
        for ids in body:
            if len(ids) <= limit:
                out.append([wrap(ids)])
                continue
            long_texts += 1
            if self.config.long == "truncate":
                out.append([wrap(ids[:limit])])
            else:
                starts = range(0, max(len(ids) - limit, 0) + step, step)
                out.append([wrap(ids[s:s + limit]) for s in starts if s < len(ids)])
        return out, long_texts

    @torch.inference_mode()
    def pool(self, windows: Sequence[Sequence[int]]) -> np.ndarray:
        """``[n, H]`` float64 pooled vectors of ``windows`` (lists of token ids), in one forward."""
        lengths = [len(w) for w in windows]
        ids = torch.full((len(windows), max(lengths)), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, w in enumerate(windows):
            ids[i, :len(w)] = torch.tensor(w, dtype=torch.long)
            mask[i, :len(w)] = 1
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state.float().numpy()
        pooled = np.empty((len(windows), hidden.shape[-1]), dtype=np.float64)
        for i, n in enumerate(lengths):
            pooled[i] = pool_tokens(hidden[i, :n], self.config.pooling)
        return pooled


def _special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids a tokenizer puts before and after one text (``[CLS]`` / ``[SEP]``, ``<s>`` / ``</s>``)."""
    body = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(body) + 1):
        if full[start:start + len(body)] == body:
            return full[:start], full[start + len(body):]
    raise ModelError(f"tokenizer {type(tokenizer).__name__}: cannot tell its special tokens from the text's")


def pool_tokens(tokens: np.ndarray, pooling: str) -> np.ndarray:
    """One window's vector from its real tokens' ``[n, H]`` fp32 states, in float64 (a sum in token order)."""
    if pooling == "cls":
        return tokens[0].astype(np.float64)
    if pooling == "max":
        return tokens.max(axis=0).astype(np.float64)
    total = tokens.astype(np.float64).sum(axis=0)
    return total / (len(tokens) if pooling == "mean" else np.sqrt(len(tokens)))
