"""Deterministic reductions across the programs of one launch, without a second launch.

Each program stores its partial sums, then calls `last_program`: an atomic counter tells the program
that finishes last, which sums every partial in index order (so the result does not depend on which
program that is) and resets the counter for the next launch (kernels/common.py: counter)."""
import triton
import triton.language as tl


@triton.jit
def last_program(counter_ptr, num_programs):
    """True in the program that finishes last. Call once per program, after storing its partials: the
    barrier and the acquire-release atomic make every program's stores visible to the last one."""
    tl.debug_barrier()
    done = tl.atomic_add(counter_ptr, 1, sem="acq_rel", scope="gpu")
    last = done == num_programs - 1
    if last:
        tl.atomic_xchg(counter_ptr, 0, sem="relaxed", scope="gpu")
    return last


@triton.jit
def sum_partials(part_ptr, offset, stride, count, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """sum_i part[offset + i * stride], i < count, in a fixed order (loads bypass L1: other programs
    wrote them)."""
    acc = tl.zeros([BLOCK], ACC)
    for s in range(0, count, BLOCK):
        i = s + tl.arange(0, BLOCK)
        acc += tl.load(part_ptr + offset + i * stride, mask=i < count, other=0.0, cache_modifier=".cg")
    return tl.sum(acc, axis=0)
