"""torch.distributed set-up for runs launched by torchrun (GPUs over NCCL, CPUs over gloo)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from imae.errors import ConfigError, TrainingError

# how long a collective may wait for a peer before the run stops with an error (a dead rank, a hung node)
DEFAULT_TIMEOUT_S = int(os.environ.get("IMAE_DIST_TIMEOUT", "600"))


# what gloo / NCCL say when a peer process died or a node became unreachable
_PEER_PHRASES = ("connection closed by peer", "connection reset", "broken pipe", "timed out", "timeout",
                 "nccl", "gloo", "socket", "connection refused")


def is_peer_error(e: BaseException) -> bool:
    """True for an error raised by a collective whose peer is gone (only when running distributed)."""
    if world_size() == 1 and not isinstance(e, getattr(dist, "DistError", ())):
        return False
    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    return isinstance(e, RuntimeError) and any(p in str(e).lower() for p in _PEER_PHRASES)


def short(e: BaseException) -> str:
    """The first line of an error message, shortened."""
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_rank_is_zero() -> bool:
    """True in a plain process and on torchrun's rank 0 (reads ``RANK``; works before and after set-up)."""
    return int(os.environ.get("RANK", "0")) == 0


def resolve_device(pref: str, local_rank: int = 0) -> torch.device:
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    if pref.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for but no CUDA device is available; use --device cpu")
        return torch.device(pref if ":" in pref else f"cuda:{local_rank}")
    return torch.device("cpu")


def setup(device_pref: str = "auto", timeout_s: int | None = None) -> DistEnv:
    """Join the process group that torchrun describes in the environment (or run as a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_pref, local_rank)
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s or DEFAULT_TIMEOUT_S),
                                device_id=device if device.type == "cuda" else None)
    return DistEnv(rank, world, local_rank, device)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def job(device_pref: str, what: str = "training") -> Iterator[DistEnv]:
    """The processes of one training job: set up, torn down at the end; a lost peer ends it with one line."""
    env = setup(device_pref)
    try:
        yield env
    except RuntimeError as e:
        if not is_peer_error(e):
            raise
        raise TrainingError(f"rank {env.rank} lost contact with another {what} process ({short(e)}); the last "
                            f"complete checkpoint is intact: restart the job with --resume auto") from None
    finally:
        cleanup()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_true(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` holds on every rank (one small collective)."""
    if world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() > 0)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def check_same_config(config: dict[str, Any]) -> None:
    """Stop every rank when the ranks were started with different configurations."""
    if world_size() == 1:
        return
    digest = hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
    digests: list[str] = [""] * world_size()
    dist.all_gather_object(digests, digest)
    if len(set(digests)) > 1:
        bad = [r for r, d in enumerate(digests) if d != digests[0]]
        raise ConfigError(f"ranks {bad} were started with a configuration different from rank 0's; "
                          f"launch every rank with the same flags")
