"""One decode step's attention over the ElasticCache's compact layout, split along the keys.

CompactKV (cache.py) keeps FA pairs (batch row, KV head) in [fa pairs, capacity, d] buffers, the first
`fa_len` positions used, and SSA pairs in [ssa pairs, width, d] buffers of at most sink + local slots.
A decode step is memory-bound, and at long contexts a handful of FA pairs hold most of the bytes: one
thread block per pair (what SDPA gives a [pairs, 1, groups, d] query) leaves most of the GPU idle. So,
as flash-decoding does, the keys are split into chunks. One launch, one program per (pair, chunk of its
keys), FA and SSA pairs alike: the pair's query heads (its GQA group, stacked as rows and padded to 16
for tl.dot) against the chunk's cached keys; each program writes its chunk's max score, exp-sum and
weighted values (fp32, base-2 exponent) and counts itself in with an atomic add. The pair's last
program to arrive merges the pair's chunks (all its query heads at once, MERGE values a load) with the
new token itself (read from this step's key and value), writes the outputs, and stores the new token in
its slot: no chunk of the step reads that slot (FA: past the keys; SSA: skipped). One launch a layer and
step, because at decode the host's launch cost, not the GPU, sets the pace.

The merge is the step's tail: one program loading a pair's partial results (61 chunks x 4 heads x 128
fp32 at 128K on an H200) from L2 in rounds, about 5 us of a 44 us layer (benchmarks/decode_timeline.py).
When the launch is at most one program an SM, so every program is resident, the pair's last MERGE_SLICES
arrivals share it: each merges a slice of head_dim (MERGE values a load, so more chunks a round); the
last arrival zeroes the pair's count, which is what the others wait on.

Every chunk, FA or SSA, has one length, and a launch has at most PROGRAMS_PER_SM programs an SM (one, or
two where one an SM loads the SMs unevenly): the programs read about as many bytes each and run as one
wave. Sizing the FA and SSA sides apart (as this kernel first did) gave 2-3 FA pairs a wave and a half of
unequal chunks at 128K, and the step ran at about 56 % of the full cache's bandwidth
(benchmarks/decode_kernel.py, docs/benchmarks.md).

In a full SSA buffer the new token's slot holds the key that has just left the window: the chunks skip
that slot. Checked against CompactKV's SDPA path in tests (GPU, and on CPU under
TRITON_INTERPRET=1).
"""

from __future__ import annotations

import functools
import sys

import torch

from .launcher import Launch

try:
    import triton
    import triton.language as tl
    HAVE_TRITON = True
except ImportError:  # CPU-only installs
    HAVE_TRITON = False

BLOCK_N = 128  # keys per inner step (fewer for head_dim > 128: a K and a V tile per stage fit in shared memory)
MIN_CHUNK = 256  # keys per program at least: below it the partial results cost more traffic than they save
MAX_CHUNKS = 1024  # chunks a pair at most (the merge walks them MERGE at a time)
MERGE = 16384  # partial results (fp32 values) a merging program loads at once
MERGE_SLICES = 2  # slices of head_dim a pair's merge splits into, each at least 16 wide (2 measured fastest)
# Programs a launch aims at, per SM: a number, or candidates that _plan picks from by how evenly they load
# the SMs. One an SM (one wave) is fastest when the chunks come out even (batch 1: 44 against 53 us for an
# 8B layer at 128K with 2 FA heads); with many SSA pairs (batch 8) their short programs leave SMs idle in a
# wave sized for the FA chunks, and two an SM run faster (8B, 64K, 16 FA pairs: 148 against 180 us).
PROGRAMS_PER_SM = (1, 2)
UNEVEN = 0.8  # more programs only when they cut the busiest SM's keys below this share of fewer programs'
NUM_WARPS, NUM_STAGES = 4, 3
# Programmatic dependent launch (Hopper and later): a step's launch is processed while the kernel before it
# finishes, and its programs wait on the GPU (griddepcontrol.wait) before their first load, not the host.
PDL = True
_SMS: dict = {}
_PDL: dict = {}
_WORK: dict = {}  # per device: the partial results' buffers, reused step after step

if HAVE_TRITON:
    # Lengths and slots change every step: compiled once for any value, not per divisibility class.
    @triton.jit(do_not_specialize=["SF", "CHUNK_F", "LEN_F", "SS", "CHUNK_S", "LEN_S", "SLOT_S"])
    def _decode(Q, K1, V1, O, KF, VF, KS, VS, ROWS, HEADS, M_W, L_W, ACC_W, ARRIVED, qk_scale,
                HK, CAP_F, WIDTH_S, NF, SF, CHUNK_F, LEN_F, SS, CHUNK_S, LEN_S, SLOT_S,
                G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr,
                GROUP_P: tl.constexpr, BLOCK_S: tl.constexpr, SLICES: tl.constexpr, SPIN: tl.constexpr,
                WAIT: tl.constexpr):
        pid = tl.program_id(0)
        if WAIT:  # launched early (PDL): every load and store waits for the kernel before to finish
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()  # a later launch may queue its programs now
        if pid < NF * SF:  # a chunk of an FA pair's keys
            pair = pid // SF
            first = pair * SF
            chunks = SF
            start = (pid - first) * CHUNK_F
            chunk = CHUNK_F
            end = LEN_F
            skip = -1
            k_base = KF + pair.to(tl.int64) * CAP_F * HEAD_DIM
            v_base = VF + pair.to(tl.int64) * CAP_F * HEAD_DIM
            slot = LEN_F
        else:  # a chunk of an SSA pair's slots
            j = pid - NF * SF
            pair = NF + j // SS
            first = NF * SF + (j // SS) * SS
            chunks = SS
            start = (pid - first) * CHUNK_S
            chunk = CHUNK_S
            end = LEN_S
            skip = tl.where(SLOT_S < LEN_S, SLOT_S, -1)  # a full buffer: the slot's key has left the window
            k_base = KS + (j // SS).to(tl.int64) * WIDTH_S * HEAD_DIM
            v_base = VS + (j // SS).to(tl.int64) * WIDTH_S * HEAD_DIM
            slot = SLOT_S
        row = tl.load(ROWS + pair).to(tl.int64)
        head = tl.load(HEADS + pair).to(tl.int64)
        q_row = (row * HK + head) * G  # the pair's first query head, rows of [b * hq, d]
        kv_row = row * HK + head  # its KV head, rows of [b * hk, d]
        offs_g = tl.arange(0, BLOCK_G)
        offs_d = tl.arange(0, HEAD_DIM)
        g_ok = offs_g < G
        q = tl.load(Q + (q_row + offs_g[:, None]) * HEAD_DIM + offs_d[None, :], mask=g_ok[:, None], other=0.0)
        # The new token and its scores, loaded before the keys: the merge at the end then waits on no load.
        k1 = tl.load(K1 + kv_row * HEAD_DIM + offs_d)
        v1 = tl.load(V1 + kv_row * HEAD_DIM + offs_d)
        offs_p = tl.arange(0, GROUP_P)
        p_ok = offs_p < G
        q_all = tl.load(Q + (q_row + offs_p[:, None]) * HEAD_DIM + offs_d[None, :], mask=p_ok[:, None], other=0.0)
        top = tl.sum(q_all.to(tl.float32) * k1.to(tl.float32)[None, :], 1) * qk_scale  # the new token's score
        m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_G], tl.float32)
        acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
        for n0 in range(0, tl.minimum(chunk, end - start), BLOCK_N):  # a pair's last chunk stops at its keys
            offs_n = start + n0 + tl.arange(0, BLOCK_N)
            ok = (offs_n < end) & (offs_n != skip)
            k = tl.load(k_base + offs_n[:, None].to(tl.int64) * HEAD_DIM + offs_d[None, :], mask=ok[:, None],
                        other=0.0)
            v = tl.load(v_base + offs_n[:, None].to(tl.int64) * HEAD_DIM + offs_d[None, :], mask=ok[:, None],
                        other=0.0)
            s = tl.dot(q, tl.trans(k)) * qk_scale
            s = tl.where(ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.math.exp2(s - m_safe[:, None])
            alpha = tl.math.exp2(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        tl.store(M_W + pid * G + offs_g, m_i, mask=g_ok)  # the group's rows only, not the padding
        tl.store(L_W + pid * G + offs_g, l_i, mask=g_ok)
        tl.store(ACC_W + (pid * G + offs_g[:, None]) * HEAD_DIM + offs_d[None, :], acc, mask=g_ok[:, None])

        # The pair's last chunks to arrive merge them all (acq_rel: an arrival sees the stores of every chunk
        # counted before it). On a GPU, when the launch is one wave (every program resident at once), the last
        # SLICES arrivals split the merge along head_dim: the last one resets the count, which tells the others,
        # waiting for it, that every chunk is in. Otherwise (and in the interpreter, which runs programs one by
        # one) the last arrival merges every slice itself.
        later = chunks - 1 - tl.atomic_add(ARRIVED + pair, 1)  # the pair's chunks still to arrive
        mergers = 1
        if SPIN:
            mergers = tl.minimum(chunks, SLICES)
        if later < mergers:
            if later == 0:
                tl.atomic_xchg(ARRIVED + pair, 0, sem="release")  # all in; zero again for the next step
            waiting = later > 0
            while waiting:  # the step's other programs all run (one wave): the count reaches zero
                waiting = tl.atomic_add(ARRIVED + pair, 0, sem="acquire") != 0
            # All of the group's query heads at once: a load of BLOCK_S chunks x GROUP_P heads x a slice a round.
            offs_s = tl.arange(0, BLOCK_S)
            for sl in range(later, SLICES, mergers):
                cols = sl * (HEAD_DIM // SLICES) + tl.arange(0, HEAD_DIM // SLICES)
                best = top  # the largest score so far, per head: the new token's to begin with
                den = tl.full([GROUP_P], 1.0, tl.float32)  # the new token's weight, exp2(top - best)
                num = tl.zeros([GROUP_P, HEAD_DIM // SLICES], tl.float32) + \
                    tl.load(V1 + kv_row * HEAD_DIM + cols).to(tl.float32)[None, :]
                for c0 in range(0, chunks, BLOCK_S):  # the pair's chunks, merged online
                    part = first + c0 + offs_s
                    ok = (c0 + offs_s < chunks)[:, None] & p_ok[None, :]
                    at = part[:, None] * G + offs_p[None, :]  # [chunks, heads] rows of the partial results
                    m_c = tl.load(M_W + at, mask=ok, other=float("-inf"), cache_modifier=".cg")
                    l_c = tl.load(L_W + at, mask=ok, other=0.0, cache_modifier=".cg")
                    a_c = tl.load(ACC_W + at[:, :, None] * HEAD_DIM + cols[None, None, :], mask=ok[:, :, None],
                                  other=0.0, cache_modifier=".cg")
                    new_best = tl.maximum(tl.max(m_c, 0), best)  # finite: the new token's score is
                    w_c = tl.math.exp2(m_c - new_best[None, :])
                    old = tl.math.exp2(best - new_best)
                    den = den * old + tl.sum(l_c * w_c, 0)
                    num = num * old[:, None] + tl.sum(a_c * w_c[:, :, None], 0)
                    best = new_best
                o_at = O + (q_row + offs_p[:, None]) * HEAD_DIM + cols[None, :]
                tl.store(o_at, (num / den[:, None]).to(O.dtype.element_ty), mask=p_ok[:, None])
            if later == 0:  # the new token into its slot: no chunk of this step reads it (FA: past the keys; SSA: skipped)
                tl.store(k_base + slot.to(tl.int64) * HEAD_DIM + offs_d, k1)
                tl.store(v_base + slot.to(tl.int64) * HEAD_DIM + offs_d, v1)


_LAUNCH = Launch(sys.modules[__name__], "_decode")


def _sm_count(device) -> int:
    if device.type != "cuda":
        return 16  # the interpreter on a CPU: any figure gives the same result
    if device not in _SMS:
        _SMS[device] = torch.cuda.get_device_properties(device).multi_processor_count
    return _SMS[device]


def _pdl(device) -> bool:
    """Whether launches on this device use programmatic dependent launch (PDL and compute capability >= 9)."""
    if not PDL or device.type != "cuda":
        return False
    if device not in _PDL:
        _PDL[device] = torch.cuda.get_device_capability(device)[0] >= 9
    return _PDL[device]


def _merge_split(device, parts: int, d: int) -> tuple[int, bool]:
    """(slices of head_dim a pair's merge walks, whether the pair's last arrivals take one each).

    Side by side only on a GPU and when the launch is one wave: a program that waits for the pair's other
    chunks must know they all run already (at most one program an SM, and every SM's program fits). The
    interpreter runs programs one after another: there the last arrival walks every slice."""
    slices = max(1, min(MERGE_SLICES, d // 16))
    if device.type != "cuda":
        return slices, False
    if parts <= _sm_count(device):
        return slices, slices > 1
    return 1, False


def _plan(fa_len: int, n_fa: int, ssa_len: int, n_ssa: int, sms: int, block_n: int) -> tuple[int, int, int]:
    """_chunks' split for the PROGRAMS_PER_SM budget; with candidates, the fewest programs an SM unless more
    cut the keys of the busiest SM (the even share of the keys, or the longest chunk where chunks are
    fewer than SMs) below UNEVEN of it. Remembered: at a step, every layer with as many FA pairs asks the
    same (a step's host time is the pace at decode)."""
    per_sm = tuple(PROGRAMS_PER_SM) if isinstance(PROGRAMS_PER_SM, (tuple, list)) else (PROGRAMS_PER_SM,)
    return _plan_for(fa_len, n_fa, ssa_len, n_ssa, sms, block_n, per_sm, UNEVEN, MIN_CHUNK, MAX_CHUNKS)


@functools.lru_cache(maxsize=1024)
def _plan_for(fa_len, n_fa, ssa_len, n_ssa, sms, block_n, per_sm, uneven, min_chunk, max_chunks):
    keys = (n_fa * fa_len if n_fa else 0) + (n_ssa * ssa_len if n_ssa else 0)
    best = span = None
    for k in per_sm:
        split = _chunks(fa_len, n_fa, ssa_len, n_ssa, max(1, int(k * sms)), block_n, min_chunk, max_chunks)
        busiest = max(keys / sms, split[0])
        if best is None or busiest < uneven * span:
            best, span = split, busiest
    return best


def _chunks(fa_len: int, n_fa: int, ssa_len: int, n_ssa: int, programs: int, block_n: int,
            min_chunk: int | None = None, max_chunks: int | None = None) -> tuple[int, int, int]:
    """(keys a chunk, chunks an FA pair, chunks an SSA pair): one chunk length for both sides, the shortest
    in whole block_ns (at least MIN_CHUNK keys, at most MAX_CHUNKS chunks a pair) whose chunks make at most
    `programs` programs, or at most one a pair when the pairs alone are more."""
    min_chunk = MIN_CHUNK if min_chunk is None else min_chunk
    max_chunks = MAX_CHUNKS if max_chunks is None else max_chunks
    fa_len, ssa_len = fa_len if n_fa else 0, ssa_len if n_ssa else 0
    count = lambda c: n_fa * -(-fa_len // c) + n_ssa * -(-ssa_len // c)  # noqa: E731
    keys = n_fa * fa_len + n_ssa * ssa_len
    longest = max(fa_len, ssa_len)
    limit = max(programs, n_fa + n_ssa)
    lo = -(-max(min_chunk, min(-(-keys // max(programs, 1)), longest), -(-longest // max_chunks)) // block_n)
    # a chunk of the longest pair's keys (one program a pair) is within the limit; the shortest often is too
    hi = lo if count(lo * block_n) <= limit else max(lo, -(-longest // block_n))
    while lo < hi:  # the fewest block_ns within the limit (the count only falls as chunks grow)
        mid = (lo + hi) // 2
        if count(mid * block_n) > limit:
            lo = mid + 1
        else:
            hi = mid
    chunk = lo * block_n
    return chunk, max(1, -(-fa_len // chunk)), max(1, -(-ssa_len // chunk))


def _workspace(device, parts: int, pairs: int, g: int, d: int):
    """m, l [parts, g], acc [parts, g, d] (fp32) and the arrival counters [pairs] (int32, zero between
    steps: the kernel resets them), views of buffers kept per device. A step's kernel uses them in stream
    order, so the next step may reuse them; decode steps on two streams of one device at once would share
    them (generation runs on one stream)."""
    need = parts * g * (d + 2)
    work = _WORK.get(device)
    if work is None or work[0].numel() < need or work[1].numel() < pairs:
        work = _WORK[device] = (torch.empty(max(need, 1 << 20), device=device, dtype=torch.float32),
                                torch.zeros(max(pairs, 1024), device=device, dtype=torch.int32))
    buf, arrived = work
    n = parts * g
    return buf[:n].view(parts, g), buf[n:2 * n].view(parts, g), buf[2 * n:need].view(parts, g, d), arrived


def decode_step(query, key, value, fa_keys, fa_values, fa_len: int, ssa_keys, ssa_values, ssa_len: int,
                ssa_slot: int, rows, heads, n_fa: int, scale: float) -> torch.Tensor:
    """Attention of one new token per row over the compact layout, and the token stored in it.

    query [b, hq, 1, d]; key, value [b, hk, 1, d] (this step's token); fa_keys / fa_values
    [fa pairs, capacity, d] with fa_len positions used and capacity > fa_len (the new token goes to
    fa_len); ssa_keys / ssa_values [ssa pairs, width, d] with ssa_len slots in use (every one a key the
    new token may see, except ssa_slot when ssa_slot < ssa_len) and the new token going to ssa_slot;
    rows, heads [fa pairs + ssa pairs] int32: each pair's batch row and KV head, FA pairs first. All
    contiguous (the buffers as CompactKV makes them). Returns [b, hq, 1, d].
    """
    if not HAVE_TRITON:
        raise RuntimeError("decode_step needs Triton (pip install triton)")
    b, hq, sq, d = query.shape
    hk = key.shape[1]
    if sq != 1 or key.shape[2] != 1:
        raise ValueError(f"decode_step takes one token per row, got a query of {sq} and keys of {key.shape[2]}")
    if d & (d - 1) or d < 16:
        raise ValueError(f"decode_step needs a head_dim that is a power of two >= 16, got {d}")
    if n_fa and fa_len >= fa_keys.shape[1]:
        raise ValueError(f"no room for the new token in the FA buffers (capacity {fa_keys.shape[1]}, {fa_len} used)")
    query, key, value = query.contiguous(), key.contiguous(), value.contiguous()  # views as they come: no copy
    if not all(t.is_contiguous() for t in (fa_keys, fa_values, ssa_keys, ssa_values)):
        raise ValueError("decode_step needs contiguous FA and SSA buffers")
    n_ssa = rows.numel() - n_fa
    g = hq // hk
    # One side may be empty: point its arguments at the other side's tensors (never read or written).
    if n_fa == 0:
        fa_keys, fa_values = ssa_keys, ssa_values
    if n_ssa == 0:
        ssa_keys, ssa_values = fa_keys, fa_values
    block_n = min(BLOCK_N, max(16, 16384 // d))
    chunk, sf, ss = _plan(fa_len, n_fa, ssa_len, n_ssa, _sm_count(query.device), block_n)
    parts = n_fa * sf + n_ssa * ss
    block_g = max(16, triton.next_power_of_2(g))
    group_p = triton.next_power_of_2(g)
    slices, spin = _merge_split(query.device, parts, d)
    m, lsum, acc, arrived = _workspace(query.device, parts, n_fa + n_ssa, g, d)
    out = torch.empty_like(query)
    pdl = _pdl(query.device)
    _LAUNCH((parts,), (query, key, value, out, fa_keys, fa_values, ssa_keys, ssa_values, rows, heads, m, lsum, acc,
                       arrived),
            (scale * 1.4426950408889634,  # base-2 exponent
             hk, fa_keys.shape[1], ssa_keys.shape[1], n_fa, sf, chunk, fa_len, ss, chunk, ssa_len, ssa_slot),
            dict(G=g, HEAD_DIM=d, BLOCK_G=block_g, BLOCK_N=block_n, GROUP_P=group_p,
                 BLOCK_S=max(1, MERGE * slices // (group_p * d)), SLICES=slices, SPIN=spin, WAIT=pdl),
            dict(num_warps=NUM_WARPS, num_stages=NUM_STAGES, launch_pdl=pdl) if pdl else
            dict(num_warps=NUM_WARPS, num_stages=NUM_STAGES))
    return out
