"""The built-in real-text corpus: CPython's own documentation, so nothing is downloaded.

* ``corpus("pydoc")``: paragraphs of ``pydoc_data.topics`` (the Python language reference topics,
  ~465k characters); label = the topic the paragraph comes from (e.g. ``"assignment"``).
* ``corpus("pydoc-passages")``: the same paragraphs joined, in order and within one topic, into passages
  of at least ``PASSAGE_CHARS`` characters (most are 450-700 tokens: the long inputs of passage retrieval
  and reranking, for sequence lengths 256-512); a topic's short remainder joins its last passage, a topic
  shorter than that is one passage. Label = the topic.
* ``corpus("docstrings")``: first paragraphs of the docstrings of standard-library modules, their
  classes and functions; label = the module (e.g. ``"json"``). Labels no one wrote by hand give a real
  retrieval / kNN classification task.
* ``corpus("docstrings-train")``: the same kind of text from *other* standard-library modules
  (:data:`TRAIN_DOCSTRING_MODULES`, disjoint from the modules above, and no text that also occurs in
  ``"docstrings"``): in-domain text to train on (e.g. distillation, which needs no labels) while
  ``"docstrings"`` stays held out for evaluation.

All are deterministic for a given Python version (a module missing from a build is skipped).
"""
from __future__ import annotations

import importlib
import inspect
import re
import warnings
from dataclasses import dataclass, field
from functools import lru_cache

CORPORA = ("pydoc", "pydoc-passages", "docstrings", "docstrings-train")
PASSAGE_CHARS = 2500  # ~4.5 characters per token of this text: passages of about 550 tokens and more

# Standard-library modules with substantial docstrings, present on every CPython >= 3.10 build.
DOCSTRING_MODULES = (
    "argparse", "ast", "asyncio", "base64", "bisect", "calendar", "collections", "configparser", "contextlib",
    "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "email", "enum", "fractions", "functools",
    "gzip", "hashlib", "heapq", "html", "http.client", "inspect", "io", "ipaddress", "itertools", "json",
    "logging", "mailbox", "math", "multiprocessing", "os", "pathlib", "pickle", "pprint", "queue", "random",
    "re", "shutil", "socket", "sqlite3", "statistics", "string", "subprocess", "tarfile", "tempfile",
    "textwrap", "threading", "typing", "unittest", "urllib.parse", "uuid", "xml.etree.ElementTree", "zipfile",
)

# Other standard-library modules (none of the above, none GUI-only): in-domain text for training.
TRAIN_DOCSTRING_MODULES = (
    "abc", "array", "atexit", "bdb", "binascii", "builtins", "bz2", "cmath", "cmd", "code", "codecs", "codeop",
    "colorsys", "compileall", "concurrent.futures", "contextvars", "copyreg", "ctypes", "dis", "doctest",
    "email.message", "email.utils", "faulthandler", "filecmp", "fileinput", "fnmatch", "ftplib", "gc", "getopt",
    "getpass", "gettext", "glob", "graphlib", "hmac", "http.cookiejar", "http.cookies", "http.server",
    "imaplib", "importlib", "importlib.metadata", "importlib.resources", "keyword", "linecache", "locale",
    "logging.handlers", "lzma", "mimetypes", "mmap", "netrc", "numbers", "operator", "optparse", "pdb",
    "pickletools", "pkgutil", "platform", "plistlib", "poplib", "posixpath", "profile", "pstats", "py_compile",
    "pyclbr", "pydoc", "quopri", "reprlib", "rlcompleter", "runpy", "sched", "secrets", "select", "selectors",
    "shelve", "shlex", "signal", "site", "smtplib", "socketserver", "ssl", "stat", "struct", "symtable", "sys",
    "sysconfig", "tabnanny", "time", "timeit", "token", "tokenize", "trace", "traceback", "tracemalloc",
    "types", "unicodedata", "unittest.mock", "urllib.error", "urllib.request", "urllib.robotparser", "warnings",
    "wave", "weakref", "webbrowser", "wsgiref.simple_server", "xml.dom.minidom", "xml.sax", "xmlrpc.client",
    "zipapp", "zipimport", "zlib", "zoneinfo",
)


@dataclass
class Corpus:
    """Real text with a label per item: ``texts[i]`` comes from ``labels[i]``."""

    name: str
    texts: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i):
        return self.texts[i]

    def __iter__(self):
        return iter(self.texts)

    def subset(self, n: int, seed: int = 0) -> "Corpus":
        """``n`` items drawn without replacement (deterministic for a seed), order kept."""
        import random

        idx = sorted(random.Random(seed).sample(range(len(self)), min(n, len(self))))
        return Corpus(self.name, [self.texts[i] for i in idx], [self.labels[i] for i in idx])


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _first_paragraph(doc: str) -> str:
    return _clean(inspect.cleandoc(doc).split("\n\n")[0])


@lru_cache(maxsize=None)
def _pydoc(min_chars: int) -> Corpus:
    from pydoc_data.topics import topics

    c = Corpus("pydoc")
    for topic in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[topic]):
            text = _clean(para)
            # skip code samples and rules: keep prose paragraphs
            if len(text) >= min_chars and sum(ch.isalpha() for ch in text) > 0.6 * len(text):
                c.texts.append(text)
                c.labels.append(topic)
    return c


@lru_cache(maxsize=None)
def _pydoc_passages(min_chars: int) -> Corpus:
    paragraphs = _pydoc(min_chars)
    c = Corpus("pydoc-passages")
    current: list[str] = []
    for i, (text, topic) in enumerate(zip(paragraphs.texts, paragraphs.labels)):
        current.append(text)
        topic_ends = i + 1 == len(paragraphs) or paragraphs.labels[i + 1] != topic
        if topic_ends or sum(map(len, current)) >= PASSAGE_CHARS:
            if topic_ends and sum(map(len, current)) < PASSAGE_CHARS and c.labels and c.labels[-1] == topic:
                c.texts[-1] += " " + " ".join(current)  # a short remainder joins the topic's last passage
            else:
                c.texts.append(" ".join(current))
                c.labels.append(topic)
            current = []
    return c


@lru_cache(maxsize=None)
def _docstrings(min_chars: int, train: bool = False) -> Corpus:
    with warnings.catch_warnings():  # touching deprecated aliases (typing.io, ...) warns
        warnings.simplefilter("ignore", DeprecationWarning)
        if not train:
            return _collect_docstrings("docstrings", DOCSTRING_MODULES, min_chars)
        held_out = set(_docstrings(min_chars).texts)
        c = _collect_docstrings("docstrings-train", TRAIN_DOCSTRING_MODULES, min_chars)
        keep = [i for i, text in enumerate(c.texts) if text not in held_out]
        return Corpus(c.name, [c.texts[i] for i in keep], [c.labels[i] for i in keep])


def _defined_in(member, modname: str) -> bool:
    """False for a function whose ``__module__`` names another top-level package than ``modname``'s, so the corpus
    does not depend on what else the process imported; members without a ``__module__`` (descriptors) count."""
    owner = getattr(member, "__module__", None)
    return not isinstance(owner, str) or owner.lstrip("_").split(".")[0] == modname.split(".")[0]


def _collect_docstrings(name: str, modules: tuple, min_chars: int) -> Corpus:
    c = Corpus(name)
    for modname in modules:
        try:
            mod = importlib.import_module(modname)
        except ImportError:  # e.g. a build without sqlite3
            continue
        seen = set()
        objs = [mod] + [getattr(mod, n) for n in sorted(dir(mod)) if not n.startswith("_")]
        for obj in objs:
            if not (obj is mod or inspect.isclass(obj) or inspect.isroutine(obj)):
                continue
            if obj is not mod and (getattr(obj, "__module__", None) or "").lstrip("_").split(".")[0] != modname.split(".")[0]:
                continue  # re-exported from another module
            members = [obj] + ([v for n, v in sorted(vars(obj).items()) if not n.startswith("_")]
                               if inspect.isclass(obj) else [])
            for m in members:
                if m is not obj and not _defined_in(m, modname):
                    continue  # a method another package set on the class (a logging.Logger patch): not this module's
                doc = getattr(m, "__doc__", None)
                if not isinstance(doc, str):
                    continue
                text = _first_paragraph(doc)
                if len(text) >= min_chars and text not in seen:
                    seen.add(text)
                    c.texts.append(text)
                    c.labels.append(modname)
    return c


def corpus(name: str = "pydoc", min_chars: int = 60) -> Corpus:
    """Real text from CPython's documentation; see the module docstring. Returns a fresh :class:`Corpus`."""
    if name == "pydoc":
        c = _pydoc(min_chars)
    elif name == "pydoc-passages":
        c = _pydoc_passages(min_chars)
    elif name == "docstrings":
        c = _docstrings(min_chars)
    elif name == "docstrings-train":
        c = _docstrings(min_chars, train=True)
    else:
        raise ValueError(f"corpus name {name!r} is unknown; expected one of {CORPORA}")
    return Corpus(c.name, list(c.texts), list(c.labels))
