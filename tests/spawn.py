"""Running a test body on several gloo ranks: each spawned process calls
``rank_main(rank, port, out_dir, *args)`` and writes ``rank{rank}.json`` in ``out_dir``."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any, Callable

import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now (for the ranks' rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_on_ranks(rank_main: Callable[..., None], out: Path, *args: Any, world: int = 2) -> list[Any]:
    """Spawn ``world`` ranks of ``rank_main`` and return what each wrote, in rank order."""
    mp.spawn(rank_main, args=(free_port(), str(out), *args), nprocs=world, join=True)
    return [json.loads((Path(out) / f"rank{r}.json").read_text()) for r in range(world)]
