"""GPU diagnosis of one remat step: where the real memory goes, and where the copies run.

    python benchmarks/gpu_diag.py --out DIR [--cap 70%] [--host-bandwidth 53.6e9] [--model gpt]

Compiles the GPT of benchmarks/gpu_check.py with remat (offload on) and writes to DIR:
``problem.json`` and ``plan.json`` (what was planned), ``alloc.json`` (every allocation and free
of one step from the CUDA caching allocator's history: action, size, the generated-code line that
made it), the Inductor code files those lines point into, and ``trace.json.gz`` (a profiler trace
of one step: copy-stream memcpys next to compute kernels). Compare offline with
``remat.simulate``: which buffer the model counts that Inductor never allocates, or the reverse.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "examples")]


def main(argv=None) -> int:
    from gpu_check import MODELS, _register_backend

    from remat import reports

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--cap", default="70%")
    ap.add_argument("--model", default="gpt")
    ap.add_argument("--host-bandwidth", type=float, default=53.6e9)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _register_backend()
    torch.backends.cuda.matmul.allow_tf32 = True
    model, inputs, loss_fn = MODELS[args.model]("cuda")
    opts = {"memory_budget": args.cap, "offload": True, "host_bandwidth": args.host_bandwidth}
    step = torch.compile(lambda *xs: loss_fn(model(*xs)), backend="remat", options=opts)

    def one():
        for p in model.parameters():
            p.grad = None
        step(*inputs).backward()
        torch.cuda.synchronize()

    one()
    one()
    (rep,) = reports(step)[-1:]
    rep.captured.problem.save(out / "problem.json")
    rep.plan.save(out / "plan.json")
    try:
        torch.cuda.memory._record_memory_history(enabled="all", context="alloc", stacks="python", max_entries=500000)
        base = torch.cuda.memory_allocated()
        one()
        snap = torch.cuda.memory._snapshot()
        torch.cuda.memory._record_memory_history(enabled=None)
        events, files = [], {}
        for trace in snap["device_traces"]:
            for e in trace:
                if e["action"] not in ("alloc", "free_requested"):
                    continue
                frames = [f for f in e.get("frames", []) if "torchinductor" in f.get("filename", "")]
                where = f"{frames[0]['filename']}:{frames[0]['line']}" if frames else ""
                if frames:
                    files[frames[0]["filename"]] = files.get(frames[0]["filename"], 0) + 1
                events.append([e["action"], e["size"], e.get("stream", 0), where])
        (out / "alloc.json").write_text(json.dumps({"base": base, "events": events}))
        for i, f in enumerate(sorted(files, key=files.get, reverse=True)[:3]):
            shutil.copy(f, out / f"inductor_{i}.py")
        print(f"{len(events)} allocator events; code files {list(files)}", flush=True)
    except Exception:
        traceback.print_exc()
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            one()
        prof.export_chrome_trace(str(out / "trace.json"))
        with open(out / "trace.json", "rb") as f, gzip.open(out / "trace.json.gz", "wb") as g:
            shutil.copyfileobj(f, g)
        (out / "trace.json").unlink()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15), flush=True)
    except Exception:
        traceback.print_exc()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
