"""Data-parallel training over torch.distributed: M processes share each minibatch and step in lockstep.

Every process holds the policy (a replica under DDP, a shard of it under FSDP). Rank 0 collects the episodes and
broadcasts them; every process builds the same batch and advantages, then trains on its own rows of each minibatch.
The loss is the one a single process would compute:

* the aggregation denominators (policy tokens, sequences; see :mod:`agentgym.algos.aggregation`) are counted on
  each process's rows and all-reduced, so every process divides by the counts of the whole minibatch;
* DDP and FSDP *average* gradients over the M processes, so each process's loss is multiplied by M
  (:attr:`DataParallel.loss_scale`): the average of M-times-scaled partial gradients is their sum, which is the
  gradient of the whole minibatch's loss;
* each process gets the same number of rows (padded with rows that have no policy token), so they run the same
  number of micro-batches and their gradient all-reduces pair up.

Backends: ``gloo`` when the policy is on the CPU, ``nccl`` when it is on a GPU. Process layout:

* one machine: ``agentgym train --trainer_procs M`` makes the current process rank 0 and starts ranks 1..M-1 with
  :mod:`torch.multiprocessing` (start method ``spawn``); they meet on a file store in a temporary directory and
  gloo connects them over the loopback interface, so nothing listens on the network;
* several machines (or GPUs): start every process with ``torchrun``; each reads ``RANK``/``WORLD_SIZE``/
  ``MASTER_ADDR``/``MASTER_PORT`` from its environment (``env://``). See docs/scaling.md.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import pickle
import shutil
import socket
import tempfile
import time
import traceback
import warnings
from typing import Any, Callable

import torch
import torch.distributed as dist
from tensordict import TensorDict
from torch import nn

from agentgym.algos import AlgoConfig, LossNormalizer, sequence_ids
from agentgym.training.policy import decoder_layers
from agentgym.training.tracking import combine_metrics

STRATEGIES = ("ddp", "fsdp")
"""``ddp``: a full replica per process, gradients all-reduced. ``fsdp``: parameters, gradients and optimizer state
sharded over processes (``torch.distributed.fsdp.fully_shard``)."""


# -- where am I ----------------------------------------------------------------------------------------------------
def launched() -> bool:
    """True in a process started by ``torchrun`` (or by :func:`setup`) as one of several: ``WORLD_SIZE`` > 1."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def process_rank() -> int:
    """This process's rank: the initialized group's, else ``RANK`` from the environment, else 0."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """True on rank 0, the process that rolls out, logs and writes checkpoints."""
    return process_rank() == 0


def wanted(cfg: Any) -> bool:
    """Whether a run with ``cfg`` trains with several processes (``cfg.trainer_procs`` > 1, or under torchrun)."""
    return int(getattr(cfg, "trainer_procs", 1)) > 1 or launched()


# -- the process group ---------------------------------------------------------------------------------------------
def backend_for(device: torch.device) -> str:
    """``nccl`` for CUDA tensors, ``gloo`` otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


def _timeout() -> datetime.timedelta:
    return datetime.timedelta(seconds=float(os.environ.get("AGENTGYM_DIST_TIMEOUT_S", "1800")))


class _Children:
    """Ranks 1..M-1 started by rank 0 on this machine, and the store they meet on."""

    def __init__(self, processes: list[Any], store: Any, store_dir: str):
        self.processes, self.store, self.store_dir = processes, store, store_dir

    def join(self, timeout_s: float = 120.0) -> list[int | None]:
        """Wait for the children to exit; stop those still running after ``timeout_s``. Returns the exit codes
        of the children that exited on their own (None for those stopped)."""
        deadline = time.monotonic() + timeout_s
        for p in self.processes:
            p.join(max(0.0, deadline - time.monotonic()))
        codes: list[int | None] = []
        for p in self.processes:
            if p.is_alive():
                warnings.warn(f"{p.name} did not exit within {timeout_s:.0f} s of rank 0 finishing; stopping it")
                p.terminate()
                p.join(5)
                codes.append(None)
            else:
                codes.append(p.exitcode)
        return codes

    def remove_store(self) -> None:
        self.store = None
        shutil.rmtree(self.store_dir, ignore_errors=True)


def _store_file() -> tuple[str, str]:
    directory = tempfile.mkdtemp(prefix="agentgym-dist-")
    return directory, os.path.join(directory, "store")


@contextlib.contextmanager
def _loopback():
    """Make gloo use the loopback interface (all processes are on this machine), unless the user chose one."""
    if "GLOO_SOCKET_IFNAME" in os.environ or "lo" not in {name for _, name in socket.if_nameindex()}:
        yield
        return
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    try:
        yield
    finally:
        del os.environ["GLOO_SOCKET_IFNAME"]


def _start_children(world_size: int, target: Callable[..., None], args: tuple, backend: str) -> _Children:
    """Start ranks 1..world_size-1 running ``target(rank, world_size, store_path, *args)``; join them as rank 0."""
    import torch.multiprocessing as mp

    store_dir, path = _store_file()
    store = dist.FileStore(path, world_size)
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=target, args=(rank, world_size, path, *args), daemon=True, name=f"agentgym-rank{rank}")
        for rank in range(1, world_size)
    ]
    for p in procs:
        p.start()
    children = _Children(procs, store, store_dir)
    # Wait for every child to reach the store before the blocking init, so a child that fails early (an import
    # error, a bad config) surfaces as an error here rather than as a hang until the timeout.
    deadline = time.monotonic() + _timeout().total_seconds()
    while True:
        dead = [(p.name, p.exitcode) for p in procs if p.exitcode is not None]
        if dead:
            children.join(1)
            children.remove_store()
            raise RuntimeError(f"trainer process(es) exited before joining the group: {dead} (see their output)")
        if all(store.check([f"agentgym/ready/{r}"]) for r in range(1, world_size)):
            break
        if time.monotonic() > deadline:
            children.join(1)
            children.remove_store()
            raise TimeoutError("trainer processes did not join the group in time (AGENTGYM_DIST_TIMEOUT_S)")
        time.sleep(0.05)
    with _loopback():
        dist.init_process_group(backend, store=store, rank=0, world_size=world_size, timeout=_timeout())
    return children


def _set_rank_env(rank: int, world_size: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world_size))


def _join_as_child(rank: int, world_size: int, path: str, backend: str) -> None:
    _set_rank_env(rank, world_size)
    store = dist.FileStore(path, world_size)
    store.set(f"agentgym/ready/{rank}", "1")
    with _loopback():
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=_timeout())


def _set_threads(world_size: int) -> None:
    # M processes on one machine share its cores; without this each would start one thread per core.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))


def run_processes(fn: Callable[..., Any], world_size: int, *args: Any, backend: str = "gloo",
                  timeout_s: float = 600.0) -> list[Any]:
    """Run ``fn(*args)`` in ``world_size`` new processes joined in one process group; return each rank's result.

    ``fn`` must be picklable (a module-level function). Ranks can read :func:`process_rank`. Raises if any rank
    raised or died. Used by tests and benchmarks; training runs use :func:`setup` instead.
    """
    import queue as queue_mod

    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    results_q = ctx.Queue()
    store_dir, path = _store_file()
    procs = [ctx.Process(target=_run_rank, args=(r, world_size, path, backend, fn, args, results_q),
                         daemon=True) for r in range(world_size)]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    errors: list[str] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(results) + len(errors) < world_size:
            try:
                rank, ok, value = results_q.get(timeout=1.0)
            except queue_mod.Empty:
                died = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if died or time.monotonic() > deadline:
                    errors.append(f"processes exited with {[p.exitcode for p in procs]} (or timed out)")
                    break
                continue
            if ok:
                results[rank] = pickle.loads(value)
            else:
                errors.append(f"rank {rank}:\n{value}")
    finally:
        for p in procs:
            p.join(30 if not errors else 1)
            if p.is_alive():
                p.terminate()
                p.join(5)
        shutil.rmtree(store_dir, ignore_errors=True)
    if errors:
        raise RuntimeError("distributed run failed:\n" + "\n".join(errors))
    return [results[r] for r in range(world_size)]


def _run_rank(rank: int, world_size: int, path: str, backend: str, fn: Callable[..., Any], args: tuple,
              results_q: Any) -> None:
    _set_rank_env(rank, world_size)
    _set_threads(world_size)
    try:
        store = dist.FileStore(path, world_size)
        with _loopback():
            dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=_timeout())
        try:
            result = fn(*args)
        finally:
            dist.destroy_process_group()
        # Plain pickle copies tensors; torch's shared-memory handles would die with this process.
        results_q.put((rank, True, pickle.dumps(result)))
    except BaseException:
        results_q.put((rank, False, traceback.format_exc()))
    results_q.close()
    results_q.join_thread()  # the result is sent before the process ends
    _exit_now(0)


# -- the training-side wrapper -------------------------------------------------------------------------------------
class _Policy(nn.Module):
    """The trained modules under one root, so that DDP/FSDP synchronise the value head's gradients too."""

    def __init__(self, model: nn.Module, value_head: nn.Module | None):
        super().__init__()
        self.model = model
        self.value_head = value_head

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)


class _ParallelForward:
    """What :func:`agentgym.training.policy.forward` calls: the wrapped root (so gradients synchronise), with the LM head
    of the underlying model (applied outside the model's forward)."""

    def __init__(self, wrapped: nn.Module, model: nn.Module):
        self._wrapped, self._model = wrapped, model

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._wrapped(*args, **kwargs)

    def get_output_embeddings(self) -> nn.Module:
        return self._model.get_output_embeddings()

    @property
    def config(self) -> Any:
        return self._model.config


def local_counts(shard: TensorDict, cfg: AlgoConfig | None = None) -> torch.Tensor:
    """[policy tokens, sequences, padded length] of ``shard`` (which holds whole sequences), as float64."""
    mask = shard["loss_mask"].bool()
    ids = shard["seq_ids"] if "seq_ids" in shard.keys() else sequence_ids(shard, cfg or AlgoConfig())
    sequences = float(torch.unique(ids[ids >= 0]).numel())
    return torch.tensor([float(mask.sum()), sequences, float(mask.shape[-1])], dtype=torch.float64)


def global_loss_normalizer(shard: TensorDict, cfg: AlgoConfig, group: Any = None) -> LossNormalizer:
    """The :class:`~agentgym.algos.LossNormalizer` of the whole minibatch, from this process's ``shard`` of it.

    Token and sequence counts are summed over the processes of ``group`` and the padded length is their maximum,
    so the result equals ``loss_normalizer(whole_minibatch, cfg)``. Every process of the group must call it.
    """
    counts = local_counts(shard, cfg)
    sums, longest = counts[:2].clone(), counts[2:].clone()
    dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=group)
    dist.all_reduce(longest, op=dist.ReduceOp.MAX, group=group)
    max_tokens = float(cfg.max_tokens if cfg.max_tokens is not None else longest.item())
    return LossNormalizer(max(float(sums[0]), 1.0), max(float(sums[1]), 1.0), max(max_tokens, 1.0))


def shard_rows(num_rows: int, rank: int, world_size: int) -> tuple[torch.Tensor, int]:
    """This rank's rows of a minibatch (every ``world_size``-th, from ``rank``) and how many rows every rank gets
    after padding (``ceil(num_rows / world_size)``)."""
    return torch.arange(num_rows)[rank::world_size], math.ceil(num_rows / world_size)


def shard_episodes(row_episode: torch.Tensor, rank: int, world_size: int) -> tuple[torch.Tensor, int]:
    """This rank's rows when whole episodes are dealt out (episode e to rank e mod ``world_size``; ``row_episode``
    [B] numbers each row's episode 0..E-1), and the most rows any rank gets (what every rank pads to)."""
    owner = row_episode % world_size
    counts = torch.bincount(owner, minlength=world_size)
    return torch.nonzero(owner == rank).flatten(), int(counts.max()) if counts.numel() else 0


class DataParallel:
    """The policy trained by M processes: the wrapped module, this process's share of each minibatch, collectives.

    Args:
        model: the policy (a transformers causal LM, or a peft model around one). Its weights are made equal on all
            processes when wrapping (rank 0's are broadcast).
        value_head: PPO's value head, trained and synchronised with the policy (or None).
        strategy: ``ddp`` or ``fsdp`` (see :data:`STRATEGIES`). FSDP replaces the parameters with sharded ones
            (DTensors): build the optimizer after wrapping; ``p.grad.full_tensor()`` gathers a gradient.
        group: the process group (default: the global one, which must be initialized).
    """

    def __init__(self, model: nn.Module, value_head: nn.Module | None = None, strategy: str = "ddp",
                 group: Any = None):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialized: use agentgym.training.distributed.setup(model) or "
                               "start the processes with torchrun and call dist.init_process_group first")
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.strategy = strategy
        self.model, self.value_head = model, value_head
        self.root = _Policy(model, value_head)
        self.device = next(model.parameters()).device
        self._children: _Children | None = None
        self._owns_group = False
        if strategy == "ddp":
            import inspect

            from torch.nn.parallel import DistributedDataParallel

            # The policy's buffers (rotary tables) are constants: no need to sync them on every forward.
            no_buffer_sync = ({"forward_sync_buffers": False}
                              if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                              else {"broadcast_buffers": False})
            self.wrapped: nn.Module = DistributedDataParallel(
                self.root,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                process_group=group,
                **no_buffer_sync,
            )
        else:
            from torch.distributed.fsdp import fully_shard

            self._broadcast_parameters()
            for layer in decoder_layers(model):
                fully_shard(layer)
            # The root stays gathered after forward: policy.forward applies the LM head outside the model's forward.
            self.wrapped = fully_shard(self.root, reshard_after_forward=False)
        self.module = _ParallelForward(self.wrapped, model)
        """Pass this to :func:`agentgym.training.policy.forward` in place of the model: its backward synchronises gradients."""

    @property
    def is_main(self) -> bool:
        """True on rank 0."""
        return self.rank == 0

    @property
    def loss_scale(self) -> float:
        """Multiply each process's loss by this: DDP/FSDP average gradients over processes, the loss wants the sum."""
        return float(self.world_size)

    def _broadcast_parameters(self) -> None:
        with torch.no_grad():
            for t in list(self.root.parameters()) + list(self.root.buffers()):
                dist.broadcast(t.data, src=0, group=self.group)

    # -- the minibatch --------------------------------------------------------------------------------------------
    def shard(self, minibatch: TensorDict, cfg: AlgoConfig) -> tuple[TensorDict, LossNormalizer]:
        """This process's episodes of ``minibatch`` (padded to the common row count) and the minibatch's normalizer.

        Every process must call it with the same minibatch. The rows are on the policy's device. Padding rows
        copy a real row with no policy token, so they add nothing to the loss, the gradients or the counts; they
        come first, so that with micro-batches of 2 rows or more no micro-batch is padding only (its metrics would
        be zeros in the averages).
        """
        from agentgym.algos import EpisodeIndex

        # Whole episodes per process: a sequence's tokens (GSPO's sequence ratio) stay together.
        episodes = EpisodeIndex.from_batch(minibatch, cfg.group_by_agent)
        rows, per_rank = shard_episodes(episodes.row_episode, self.rank, self.world_size)
        local = minibatch[rows]
        norm = global_loss_normalizer(local, cfg, self.group)
        if len(rows) < per_rank:
            pad = minibatch[torch.zeros(per_rank - len(rows), dtype=torch.long)].clone()
            pad["loss_mask"] = torch.zeros_like(pad["loss_mask"])
            local = torch.cat([pad, local]) if len(rows) else pad
        return local.to(self.device), norm

    # -- collectives ------------------------------------------------------------------------------------------------
    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every process (pickled; for episodes and other small objects)."""
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def reduce_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Combine each process's metrics: the mean over processes (max/min for keys ending in _max/_min)."""
        gathered: list[dict[str, float] | None] = [None] * self.world_size
        dist.all_gather_object(gathered, metrics, group=self.group)
        return combine_metrics([m for m in gathered if m])

    def close(self) -> None:
        """Wait for the ranks this process started, then leave the process group (when this wrapper joined it).

        The children finish their last step and exit first, so no rank tears its connections down while another
        still uses them.
        """
        codes: list[int | None] = []
        children, self._children = self._children, None
        if children is not None:
            codes = children.join()
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self._owns_group = False
        if children is not None:
            children.remove_store()
        bad = [c for c in codes if c not in (0, None)]
        if bad:
            raise RuntimeError(f"trainer processes exited with codes {codes} (see their output above)")


# -- joining a run --------------------------------------------------------------------------------------------------
def setup(model: nn.Module, value_head: nn.Module | None = None, *, world_size: int = 1, tokenizer: Any = None,
          state_dict: dict[str, torch.Tensor] | None = None, entry: Callable[..., None] | None = None,
          entry_args: tuple = (), strategy: str = "ddp") -> DataParallel:
    """Join (or create) the process group of a run with several trainer processes and wrap ``model``.

    Under ``torchrun`` every process calls this with its own policy. Otherwise the calling process becomes rank 0
    and starts ``world_size - 1`` more on this machine; each rebuilds ``model``'s architecture with ``tokenizer``
    and ``state_dict`` (:class:`~agentgym.models.PolicySpec`), joins the group and runs
    ``entry(model, tokenizer, *entry_args)`` (a module-level function: it is pickled), which must call ``setup``
    again, with the group now joined. The :class:`~agentgym.training.trainer.Trainer` passes a function that builds the same
    Trainer and follows rank 0's iterations.
    """
    if strategy != "ddp":
        raise NotImplementedError(
            "the Trainer runs DDP; FSDP is available to custom loops through agentgym.training.distributed.DataParallel "
            "(checkpoints and weight pushes of sharded parameters are not wired into the Trainer)")
    device = next(model.parameters()).device
    backend = backend_for(device)
    children = None
    owns = False
    if not dist.is_initialized():
        if launched():
            world = int(os.environ["WORLD_SIZE"])
            if world_size not in (1, world):
                raise ValueError(f"--trainer_procs {world_size} but torchrun started {world} processes")
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group(backend, init_method="env://", timeout=_timeout())
        else:
            if entry is None or tokenizer is None or state_dict is None:
                raise ValueError("starting trainer processes needs the tokenizer, the weights and an entry function")
            from agentgym.models import policy_spec

            spec = policy_spec(model, tokenizer, state_dict)
            children = _start_children(int(world_size), _child_main, (backend, spec, entry, entry_args), backend)
        owns = True
    parallel = DataParallel(model, value_head, strategy)
    parallel._children, parallel._owns_group = children, owns
    return parallel


def _child_main(rank: int, world_size: int, path: str, backend: str, spec: Any, entry: Callable[..., None],
                entry_args: tuple) -> None:
    """Rank ``rank`` of a run started by :func:`setup`: rebuild the policy, join the group, run ``entry``."""
    code = 0
    try:
        _set_threads(world_size)
        model, tokenizer = spec.build()
        _join_as_child(rank, world_size, path, backend)
        try:
            entry(model, tokenizer, *entry_args)
        finally:
            dist.destroy_process_group()
    except BaseException:
        traceback.print_exc()
        code = 1
    _exit_now(code)


def _exit_now(code: int) -> None:
    """End a child process without running destructors: those of the process group's connections can wait on
    peers that are themselves waiting for this process to exit. Nothing is left to clean up at this point."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
