"""torch 2.13 (CPU, gloo): destroy_process_group() does not end the default group once torch.distributed.nn has
been imported after init_process_group, and the group's real teardown inside interpreter exit aborts the process
with "terminate called without an active exception" whenever a gloo thread then needs the GIL.

Cause: torch/distributed/nn/functional.py declares ``def broadcast(tensor, src, group=group.WORLD)`` (and ten
more), so the default group is captured when the module is imported. DistributedDataParallel's constructor
imports it (via torch.distributed._shard), i.e. always after init. The group (gloo_tcp_loop and two
pt_gloo_runloop threads) then outlives destroy_process_group() and is destroyed by Py_FinalizeEx's last gc
pass (gdb: ~ProcessGroupGloo <- pybind11 dealloc <- tupledealloc <- func_clear <- finalize_modules). Any gloo
thread that takes the GIL at that moment -- a Python callback on a work's future (here), or, in a DDP
training script, a worker dropping a finished AsyncAllreduceWork whose output tensor holds the last
reference to a Python tensor (TensorImpl::decref_pyobject -> gil_scoped_acquire, seen under gdb in
bitladder's uneven-shards test) -- is ended by Python with pthread_exit; the forced unwind meets a noexcept
frame and std::terminate aborts the process (core: take_gil -> PyThread_exit_thread -> __pthread_unwind ->
__gxx_personality_v0 -> std::terminate). In training scripts the window is a gloo worker delayed past the
final barrier under CPU load: about 1 torchrun run in 10 under load by our earlier count; 0 in ~160
script runs here, so this file forces the window with a still-running work instead.

Run (2 cores, other jobs running; OMP_NUM_THREADS=1):
    python -m torch.distributed.run --standalone --nproc-per-node 2 gloo-teardown-repro.py pin
        -> rank 0 aborts (exitcode -6, "terminate called without an active exception"): 5 of 5 runs
    ... gloo-teardown-repro.py nopin    (torch.distributed.nn not imported)           -> exit 0, 5 of 5 runs
    ... gloo-teardown-repro.py unpin    (pin, then the workaround below after destroy) -> exit 0, 5 of 5 runs
The workaround (bitladder.methods.train.ddp.close): after destroy_process_group(), replace the destroyed
group by None in the default arguments of torch.distributed's functions, so the last reference goes and
the group's threads are joined there, while the interpreter is alive.
"""

import sys
import time
import types

import torch
import torch.distributed as dist

mode = sys.argv[1]
dist.init_process_group("gloo")
if mode != "nopin":
    import torch.distributed.nn  # noqa: F401  (what DDP's constructor imports)
rank = dist.get_rank()
if rank == 1:
    time.sleep(2)  # rank 0's all_reduce is still running when rank 0 exits
work = dist.all_reduce(torch.ones(1 << 16), async_op=True)
work.get_future().then(lambda fut: None)  # the gloo worker thread takes the GIL to run this when the work ends
if rank == 1:
    work.wait()
group = dist.group.WORLD
dist.destroy_process_group()  # pinned: returns at once and the group lives on
if mode == "unpin":
    for name, module in list(sys.modules.items()):
        if module is not None and name.startswith("torch.distributed"):
            for f in list(vars(module).values()):
                if isinstance(f, types.FunctionType) and any(d is group for d in f.__defaults__ or ()):
                    f.__defaults__ = tuple(None if d is group else d for d in f.__defaults__)
del group  # unpinned: the group ends here, waiting for its work
print(f"rank {rank} leaves Python", file=sys.stderr)
