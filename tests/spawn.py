"""Running a test body on several gloo ranks: each spawned process calls
``rank_main(rank, rendezvous, out_dir, *args)``, joins the group with ``join_group(rank,
rendezvous, world)`` and writes ``rank{rank}.json`` in ``out_dir``.

The ranks meet through a file in the test's own ``out_dir`` (no TCP port that another test's
ranks could hold), and every wait of the group times out (``TIMEOUT``): a rank that never reaches a
collective fails the test instead of hanging the suite (one run of the suite hung 15 minutes in
test_ddp with both ranks idle, session 8).

Each rank logs the ``remat`` logger at DEBUG to ``rank{rank}.log`` (every agreement it enters and
the answer it got: ``remat.ranks``) and, if it is still running a minute before the timeout, the
stacks of its threads to ``stacks{rank}.txt``; when a rank fails, the error names what each rank
logged last and where it waited (``ranks_failed``), so a divergence says which decision it was."""

from __future__ import annotations

import datetime
import faulthandler
import json
import logging
from pathlib import Path
from typing import Any, Callable

import torch.distributed as dist
import torch.multiprocessing as mp

TIMEOUT = datetime.timedelta(minutes=10)  # a busy 2-core CI machine compiles for minutes between collectives
STACKS_AFTER = TIMEOUT - datetime.timedelta(minutes=1)  # a rank still running then writes its stacks
TAIL_LINES = 12  # lines of each rank's log and stacks that a failure shows
_OPEN: list = []  # this rank's stacks file: faulthandler writes to it from its own thread


def run_on_ranks(rank_main: Callable[..., None], out: Path, *args: Any, world: int = 2) -> list[Any]:
    """Spawn ``world`` ranks of ``rank_main`` and return what each wrote, in rank order. When a
    rank fails, raise ``ranks_failed``'s error: spawn's, with each rank's last log lines and stacks."""
    rendezvous = Path(out) / "rendezvous"
    try:
        mp.spawn(rank_main, args=(str(rendezvous), str(out), *args), nprocs=world, join=True)
    except Exception as e:  # spawn's ProcessRaisedException / ProcessExitedException
        raise ranks_failed(e, Path(out), world) from e
    return [json.loads((Path(out) / f"rank{r}.json").read_text()) for r in range(world)]


def join_group(rank: int, rendezvous: str, world: int, timeout: datetime.timedelta = TIMEOUT) -> None:
    """This rank's gloo process group, met through the file ``rendezvous``, whose waits time out
    after ``timeout``, with its ``remat`` log and its stacks before ``TIMEOUT`` written beside it."""
    out = Path(rendezvous).parent
    handler = logging.FileHandler(out / f"rank{rank}.log")
    handler.setFormatter(logging.Formatter(f"%(asctime)s rank {rank} %(levelname)s %(message)s"))
    logger = logging.getLogger("remat")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    _OPEN.append(open(out / f"stacks{rank}.txt", "w"))
    faulthandler.dump_traceback_later(STACKS_AFTER.total_seconds(), file=_OPEN[-1])
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world, timeout=timeout)


def turns_logged(out: Path, rank: int) -> list[str]:
    """The agreements that rank ``rank`` entered, as its remat log names them (``remat.ranks``:
    number, graph, what was asked, digest)."""
    marker = f"rank {rank} enters "
    lines = (Path(out) / f"rank{rank}.log").read_text().splitlines()
    return [line.split(marker, 1)[1] for line in lines if marker in line]


def ranks_failed(error: Exception, out: Path, world: int) -> AssertionError:
    """``error`` (a rank failed) followed by the last lines of each rank's log and the innermost
    frames of each thread of the ranks that wrote their stacks."""
    parts = [str(error)]
    for rank in range(world):
        log, stacks = out / f"rank{rank}.log", out / f"stacks{rank}.txt"
        lines = log.read_text(errors="replace").splitlines()[-TAIL_LINES:] if log.exists() else []
        if lines:
            parts.append(f"--- rank {rank}'s remat log (last {len(lines)} lines)\n" + "\n".join(lines))
        if stacks.exists() and stacks.stat().st_size:
            parts.append(f"--- rank {rank}'s threads {STACKS_AFTER} after it joined\n" + innermost(stacks.read_text()))
    return AssertionError("\n".join(parts))


def innermost(stacks: str, frames: int = 8) -> str:
    """faulthandler's dump with each thread cut to its header and its ``frames`` innermost calls."""
    blocks = [b.splitlines() for b in stacks.split("\n\n") if b.strip()]
    return "\n".join("\n".join(b[: frames + 1]) for b in blocks)
