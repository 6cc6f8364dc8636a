"""Custom ops that move OFFLOAD activations to host and back on a copy stream beside compute.

    host = remat.to_host(x)                       # copy issued (CUDA: copy stream, pinned memory)
    host = remat.wait_copy(host)                  # compute waits for the copy
    remat.free_(x, host)                          # x's storage is freed (after the wait)
    dev = remat.to_device(host, device, size, stride)   # prefetch issued (allocated on compute stream)
    dev = remat.wait_copy(dev)                    # compute waits for it

``remat.passes.apply_plan.add_offload`` puts ``to_host`` after the value's last forward use, the
wait and the free where ``remat.transfers`` says the copy is done, ``to_device`` where the
prefetch starts and its wait just before the first backward use. On CUDA every copy of a device
runs on one copy stream, ordered by events; host buffers are pinned (torch's caching host
allocator reuses them across steps and keeps them until the copies that read them are done).
Elsewhere the copies are plain clones, so the same graphs run, and are tested, on the CPU.
``free_`` declares that it writes ``x``: so the compiler runs every reader of ``x`` before it and
never hands ``x``'s buffer to a value computed before it.
"""

from __future__ import annotations

import torch

_streams: dict[torch.device, "torch.cuda.Stream"] = {}
_events: dict[int, tuple["torch.cuda.Event", torch.device]] = {}  # pending copies, by destination data_ptr


def _copy_stream(device: torch.device) -> "torch.cuda.Stream":
    if device not in _streams:
        _streams[device] = torch.cuda.Stream(device=device)
    return _streams[device]


def _copy_on_stream(dst: torch.Tensor, src: torch.Tensor, device: torch.device) -> None:
    """Copy ``src`` into ``dst`` on ``device``'s copy stream, after the compute queued so far
    (which wrote ``src``, or last used ``dst``'s memory); ``wait_copy(dst)`` waits for it."""
    stream = _copy_stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        dst.copy_(src, non_blocking=True)
        event = torch.cuda.Event()
        event.record(stream)
    _events[dst.data_ptr()] = (event, device)


@torch.library.custom_op("remat::to_host", mutates_args=())
def to_host(x: torch.Tensor) -> torch.Tensor:
    """Issue the copy of ``x`` to host memory; ``wait_copy`` completes it."""
    if x.device.type != "cuda":
        return x.detach().to("cpu", copy=True).contiguous()
    host = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
    _copy_on_stream(host, x, x.device)
    return host


@to_host.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty(x.shape, dtype=x.dtype, device="cpu")


@torch.library.custom_op("remat::to_device", mutates_args=())
def to_device(host: torch.Tensor, device: torch.device, size: list[int], stride: list[int]) -> torch.Tensor:
    """Issue the copy of ``host`` back to ``device`` with the original layout; ``wait_copy``
    completes it."""
    out = torch.empty_strided(size, stride, dtype=host.dtype, device=device)
    if device.type != "cuda":
        out.copy_(host)
    else:
        _copy_on_stream(out, host, device)
    return out


@to_device.register_fake
def _(host: torch.Tensor, device: torch.device, size: list[int], stride: list[int]) -> torch.Tensor:
    return torch.empty_strided(size, stride, dtype=host.dtype, device=device)


@torch.library.custom_op("remat::free_", mutates_args=("x",))
def free_(x: torch.Tensor, after: torch.Tensor) -> None:
    """Free ``x``'s storage now, if ``x`` spans all of it (``after``: the wait it must follow)."""
    storage = x.untyped_storage()
    if x.storage_offset() == 0 and x.is_contiguous() and storage.nbytes() == x.numel() * x.element_size():
        storage.resize_(0)


@free_.register_fake
def _(x: torch.Tensor, after: torch.Tensor) -> None:
    return None


# ``wait_copy`` returns its input (an alias), which ``custom_op`` forbids: define it by schema.
_lib = torch.library.Library("remat", "FRAGMENT")
_lib.define("wait_copy(Tensor(a) t) -> Tensor(a)")


def _wait_copy(t: torch.Tensor) -> torch.Tensor:
    pending = _events.pop(t.data_ptr(), None)
    if pending is not None:
        event, device = pending
        torch.cuda.current_stream(device).wait_event(event)
    return t


def _wait_copy_fake(t: torch.Tensor) -> torch.Tensor:
    return t


torch.library.impl("remat::wait_copy", "CompositeExplicitAutograd", lib=_lib)(_wait_copy)
torch.library.register_fake("remat::wait_copy", lib=_lib)(_wait_copy_fake)
torch.fx.node.has_side_effect(torch.ops.remat.wait_copy.default)

TO_HOST = torch.ops.remat.to_host.default
TO_DEVICE = torch.ops.remat.to_device.default
WAIT_COPY = torch.ops.remat.wait_copy.default
FREE = torch.ops.remat.free_.default
