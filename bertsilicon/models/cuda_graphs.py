"""CUDA graphs of a fused encoder's layers: shape buckets, capture, and the cache of captured graphs.

Host time (Python, op validation, Triton's launcher: tens of microseconds a launch, 7-11 launches a layer) is
larger than a modern GPU's time for the kernels of a student layer on a few thousand tokens, so every call whose
layers run on at most ``GRAPH_MAX_TOKENS`` token rows replays a graph: the host then does ~10 small launches per
forward instead of ~50-70. Graphs are keyed on bucketed shapes (:class:`GraphKey`: the batch's power of two,
``GRAPH_BUCKETS`` for the length, :func:`graph_tokens` for the packed rows), so a new length or batch in a known
bucket replays instead of capturing; at most ``GRAPH_CACHE_SIZE`` graphs are kept (least recently used dropped).
The buckets match the kernels' autotuning buckets, so a graph runs the eager path's tile configs on the same rows.
"""
from __future__ import annotations

import contextlib
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode

GRAPH_BUCKETS = (16, 32, 64, 128, 256, 512)  # sequence-length buckets of the CUDA graphs (longer: eager)
GRAPH_MAX_TOKENS = 8192  # graphs for calls whose layers run on <= this many token rows (see FusedEncoder)
GRAPH_CACHE_SIZE = 32    # captured graphs kept per encoder, least recently used dropped
CAPTURE_DEVICES = ("cuda",)  # where graphs are captured (tests add "cpu" with the eager stand-in, replay_eagerly)
_GRAPH_LOCK = threading.Lock()  # graph replays write shared static buffers: one at a time per process
_GRAPH_DONE: dict = {}  # device -> CUDA event recorded after the last graph call's output was copied out


@contextlib.contextmanager
def graph_turn(device: torch.device):
    """One graph call at a time, on the host (the lock) and on the GPU: a call on another CUDA stream waits for
    the previous call's copy-out before it writes the static inputs (the lock alone orders only the launches)."""
    with _GRAPH_LOCK:
        done = _GRAPH_DONE.get(device) if device.type == "cuda" else None
        if done is not None:
            torch.cuda.current_stream(device).wait_event(done)
        try:
            yield
        finally:
            if device.type == "cuda":
                event = _GRAPH_DONE[device] = torch.cuda.Event()
                event.record(torch.cuda.current_stream(device))


def _pow2(n: int) -> int:
    """The next power of two >= n (>= 1)."""
    return 1 << max(0, int(n) - 1).bit_length()


def length_bucket(length: int) -> int:
    """The graph length bucket of a sequence length (<= GRAPH_BUCKETS[-1]): the kernels' power-of-two
    bucket (attention's grid and autotuning key)."""
    return next(b for b in GRAPH_BUCKETS if b >= length)


def graph_batch(path: str, batch: int) -> int:
    """The batch a graph is captured for: packed, the batch's power of two (the extra sequences are empty and
    cost nothing); padded, the batch itself (extra rows would be computed)."""
    return _pow2(batch) if path == "packed" else int(batch)


def graph_tokens(tokens: int) -> int:
    """Token rows of the packed graph for ``tokens`` real tokens: rounded up to a multiple of 1/8 of their
    power-of-two bucket (>= 16), so at most 8 graphs per octave, at most 1/8 of a bucket of wasted rows
    (e.g. 1919 -> 2048, 426 -> 448, 2049 -> 2560), and the same power-of-two bucket as ``tokens``: the
    kernels' autotuning key (``kernels._common.token_bucket``), so the graph runs the eager path's configs."""
    bucket = max(16, _pow2(tokens))
    step = max(16, bucket // 8)
    return min(bucket, -(-max(int(tokens), 1) // step) * step)


@dataclass(frozen=True)
class GraphKey:
    path: str        # "packed" (unpad=True, padding in the batch) | "padded"
    batch: int       # packed: the batch's power of two; padded: the batch size
    length: int      # length bucket (GRAPH_BUCKETS)
    tokens: int      # token rows the layers run on (packed: graph_tokens(T); padded: batch * length)
    dtype: torch.dtype
    device: torch.device


@dataclass
class CapturedGraph:
    """A recorded forward: ``replay()`` recomputes ``output`` from the current contents of ``inputs``."""

    replay: object   # () -> None
    inputs: tuple    # static input tensors, written before each replay
    output: torch.Tensor
    graph: object = None  # the torch.cuda.CUDAGraph


def _new_graph_pool(device: torch.device):
    return torch.cuda.graph_pool_handle() if device.type == "cuda" else None


def capture_graph(body, inputs: tuple, pool) -> CapturedGraph:
    """Capture ``body()`` (it reads ``inputs``, returns the output tensor) as a CUDA graph: two warm-up runs on
    a side stream first (Triton compiles and autotunes, the allocator settles), then the capture into
    ``pool``, shared by the encoder's graphs (they never run concurrently; each output is copied out, or
    read, before another graph replays)."""
    device = inputs[0].device
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(2):
            body()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        output = body()
    return CapturedGraph(graph.replay, inputs, output, graph)


class GraphCaptureError(RuntimeError):
    """Raised by :func:`replay_eagerly` where a CUDA graph capture would fail: the body read a tensor on the host."""


class _NoHostReads(TorchDispatchMode):
    """Raises :class:`GraphCaptureError` on the ops a CUDA stream capture refuses, seen on any device: a value
    read on the host (``.item()``, ``bool()``, ``int()``, ``.tolist()``: ``_local_scalar_dense``, a device
    sync), ops whose output shape depends on the data (``nonzero``, boolean indexing, ``masked_select``,
    ``unique``: a sync for the size), and tensors made from host data (``torch.tensor([...])``: a copy from
    pageable host memory). So on CPU a body that would break the capture fails as it would on the GPU."""

    _REFUSED = {"_local_scalar_dense", "nonzero", "argwhere", "masked_select", "unique", "_unique", "_unique2",
                "unique_dim", "unique_consecutive", "repeat_interleave", "lift_fresh", "lift_fresh_copy"}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name == "index" and any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
                                   for i in (args[1] if len(args) > 1 else ())):
            name = "boolean indexing"  # a nonzero inside
        if name in self._REFUSED or name == "boolean indexing":
            raise GraphCaptureError(f"{name} inside a CUDA graph's body: it reads the device on the host (a sync "
                                    "or a data-dependent size), which a stream capture does not allow")
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def no_host_reads():
    """:class:`_NoHostReads` on, and ``Tensor.tolist`` refused (on a CPU tensor it dispatches no op)."""
    def tolist(self):
        raise GraphCaptureError("Tensor.tolist inside a CUDA graph's body: a device sync, which a stream capture "
                                "does not allow")
    saved = torch.Tensor.tolist
    torch.Tensor.tolist = tolist
    try:
        with _NoHostReads():
            yield
    finally:
        torch.Tensor.tolist = saved


def replay_eagerly(body, inputs: tuple, pool=None) -> CapturedGraph:
    """A stand-in for :func:`capture_graph` where no graph can be captured (CPU): ``replay()`` runs ``body``
    again and copies its result into the same output tensor. For checking everything around the capture
    (buckets, static buffers, reuse, limits) without a GPU: ``tests/models/test_optimize_graphs.py`` and
    ``the GPU benchmark's ``--dry-run```` put it in place of :func:`capture_graph` and add ``"cpu"`` to
    ``CAPTURE_DEVICES``. (Unlike a graph it runs the layers' Python again on each replay.) The body runs under
    :func:`no_host_reads`, so what would make the real capture fail (a sync, ...) fails here too, at capture."""
    with no_host_reads():
        output = body()

    def replay():
        with torch.inference_mode(), no_host_reads():  # a graph writes its output whatever the autograd mode
            output.copy_(body())
    return CapturedGraph(replay, inputs, output)




class GraphCache:
    """An encoder's captured graphs (:class:`GraphKey` -> :class:`CapturedGraph`, least recently used first),
    their memory pool, and the operand tensors they were captured on. ``enabled`` turns replays on; a failed
    capture turns it off and says why in ``report.notes``."""

    def __init__(self, layers, report, enabled: bool):
        self.layers = layers
        self.report = report
        self.enabled = enabled
        self.graphs: OrderedDict = OrderedDict()
        self.pool = None
        self.operands: Optional[tuple] = None

    def drop(self) -> None:
        """Forget every graph (the tensors they point at moved or were replaced)."""
        self.graphs.clear()
        self.pool = None
        self.operands = None

    def serve(self, x: torch.Tensor, on_layer) -> bool:
        """Whether a call on ``x [B, L, H]`` may replay graphs: on, no per-layer callback, a capture device,
        L within the buckets, no autograd, not while torch.compile traces."""
        return (self.enabled and on_layer is None and x.device.type in CAPTURE_DEVICES
                and x.shape[1] <= GRAPH_BUCKETS[-1] and not torch.is_grad_enabled()
                and not torch.compiler.is_compiling())

    def _read_current_weights(self) -> None:
        """Before a replay (which never runs the layers' forwards): every layer's prepared copies brought up
        to date in place (:meth:`FusedEncoderLayer.sync_prepared`: same tensors, so the graphs see the new
        values), and every graph dropped when a tensor the layers read was *replaced* since they were
        captured (a new ``nn.Parameter``: the graphs hold the old one's address). The tensors are held, so
        an old one is never freed while a graph may read it."""
        tensors = []
        for layer in self.layers:
            layer.sync_prepared()
            tensors += layer.operand_tensors()
        held = self.operands
        if held is not None and (len(held) != len(tensors) or any(a is not b for a, b in zip(held, tensors))):
            self.drop()
        self.operands = tuple(tensors)

    def _replay(self, key: GraphKey, make_inputs, fill, body) -> Optional[torch.Tensor]:
        """Replay the graph for ``key`` on this call's data and return its static output: ``make_inputs()``
        allocates the static inputs (first use only), ``fill(*inputs)`` writes this call's data into them, and
        ``body(*inputs)`` is the work the graph records (it returns the output). A new graph is captured after
        ``fill``, so the warm-up runs (where Triton autotunes new shapes) see real data, not empty buffers.
        None when the capture fails (an op that syncs, ...): graphs are then off for this encoder, the report
        and a warning say why, and the caller runs the layers eagerly."""
        self._read_current_weights()
        cache = self.graphs
        graph = cache.get(key)
        if graph is not None:
            cache.move_to_end(key)
            fill(*graph.inputs)
        else:
            with torch.inference_mode(False):  # normal tensors: a later call outside inference_mode writes them
                inputs = make_inputs()
            fill(*inputs)
            if self.pool is None:  # one memory pool for all of this encoder's graphs
                self.pool = _new_graph_pool(key.device)
            try:
                graph = capture_graph(lambda: body(*inputs), inputs, self.pool)
            except Exception as exc:
                self.enabled = False
                self.drop()
                note = f"CUDA graph capture failed, running eagerly: {type(exc).__name__}: {exc}"
                self.report.notes.append(note)
                warnings.warn(f"bertsilicon: {note}", stacklevel=4)
                return None
            cache[key] = graph
            while len(cache) > GRAPH_CACHE_SIZE:
                cache.popitem(last=False)
        graph.replay()
        return graph.output

    def packed(self, packed: torch.Tensor, cu_seqlens: torch.Tensor, B: int, L: int, run_layers) -> torch.Tensor:
        """``run_layers(x, cu_seqlens, max_seqlen)`` on packed tokens ``[T, H]`` of B sequences (``cu_seqlens [B + 1]``, longest <= L) by
        replaying the graph of ``(batch bucket, length bucket, graph_tokens(T))``. Its static inputs: token
        rows ``[T_g, H]`` (rows T.. are scratch: no sequence covers them, every op on them is row-local, and
        they are never read back) and offsets ``[B_g + 1]`` (entries past B repeat T: empty sequences,
        whose attention programs return at once). Attention's grid covers the length bucket. Returns ``[T, H]``
        (a view of the static output: read it before the next replay), or None when the capture failed."""
        T, H = packed.shape
        key = GraphKey("packed", graph_batch("packed", B), length_bucket(L), graph_tokens(T), packed.dtype, packed.device)

        def make_inputs():
            return (packed.new_zeros(key.tokens, H),
                    torch.zeros(key.batch + 1, dtype=torch.int32, device=packed.device))

        def fill(static_x, static_cu):
            static_x[:T].copy_(packed)
            static_cu[:B + 1].copy_(cu_seqlens)
            static_cu[B + 1:].fill_(T)  # empty sequences; T is known here: no host read

        out = self._replay(key, make_inputs, fill, lambda x, cu: run_layers(x, cu, key.length))
        return None if out is None else out[:T]

    def padded(self, x: torch.Tensor, key_mask: Optional[torch.Tensor], run_layers) -> torch.Tensor:
        """``run_layers(x, key_mask)`` on ``x [B, L, H]`` by replaying the graph of ``(B, length bucket)``: x is
        padded to the bucket with masked keys, so real positions are unchanged. Returns ``[B, L, H]``, or None
        when the capture failed."""
        B, L, H = x.shape
        key = GraphKey("padded", graph_batch("padded", B), length_bucket(L), B * length_bucket(L), x.dtype, x.device)

        def make_inputs():
            return (x.new_zeros(B, key.length, H), torch.zeros(B, key.length, dtype=torch.bool, device=x.device))

        def fill(static_x, static_mask):
            static_x[:, L:].zero_()
            static_x[:, :L].copy_(x)
            static_mask[:, L:].zero_()
            if key_mask is None:
                static_mask[:, :L].fill_(True)
            else:
                static_mask[:, :L].copy_(key_mask)

        out = self._replay(key, make_inputs, fill, run_layers)
        return None if out is None else out[:, :L].clone()
