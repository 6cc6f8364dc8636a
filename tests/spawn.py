"""Running a test body on several gloo ranks: each spawned process calls
``rank_main(rank, rendezvous, out_dir, *args)``, joins the group with ``join_group(rank,
rendezvous, world)`` and writes ``rank{rank}.json`` in ``out_dir``.

The ranks meet through a file in the test's own ``out_dir`` (no TCP port that another test's
ranks could hold), and every wait of the group times out (``TIMEOUT``): a rank that never reaches a
collective fails the test instead of hanging the suite (one run of the suite hung 15 minutes in
test_ddp with both ranks idle, session 8)."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any, Callable

import torch.distributed as dist
import torch.multiprocessing as mp

TIMEOUT = datetime.timedelta(minutes=10)  # a busy 2-core CI machine compiles for minutes between collectives


def run_on_ranks(rank_main: Callable[..., None], out: Path, *args: Any, world: int = 2) -> list[Any]:
    """Spawn ``world`` ranks of ``rank_main`` and return what each wrote, in rank order."""
    rendezvous = Path(out) / "rendezvous"
    mp.spawn(rank_main, args=(str(rendezvous), str(out), *args), nprocs=world, join=True)
    return [json.loads((Path(out) / f"rank{r}.json").read_text()) for r in range(world)]


def join_group(rank: int, rendezvous: str, world: int) -> None:
    """This rank's gloo process group, met through the file ``rendezvous``."""
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world, timeout=TIMEOUT)
