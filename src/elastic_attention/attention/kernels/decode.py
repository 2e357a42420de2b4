"""One decode step's attention over the ElasticCache's compact layout, split along the keys.

CompactKV (cache.py) keeps FA pairs (batch row, KV head) in [fa pairs, capacity, d] buffers, the first
`fa_len` positions used, and SSA pairs in [ssa pairs, width, d] buffers of at most sink + local slots.
A decode step is memory-bound, and at long contexts a handful of FA pairs hold most of the bytes: one
thread block per pair (what SDPA gives a [pairs, 1, groups, d] query) leaves most of the GPU idle. So,
as flash-decoding does, the keys are split into chunks. One launch, one program per (pair, chunk of its keys), FA and SSA pairs alike: the pair's query heads
(its GQA group, stacked as rows and padded to 16 for tl.dot) against the chunk's cached keys; each
program writes its chunk's max score, exp-sum and weighted values (fp32, base-2 exponent) and counts
itself in with an atomic add. The pair's last program to arrive merges the pair's chunks (at most
MAX_CHUNKS, one load a query head) with the new token itself (read from this step's key and value),
writes the outputs, and stores the new token in its slot: no chunk of the step reads that slot (FA:
past the keys; SSA: skipped). One launch a layer and step, because at decode the host's launch cost,
not the GPU, sets the pace.

In a full SSA buffer the new token's slot holds the key that has just left the window: the chunks skip
that slot. Checked against CompactKV's SDPA path in tests (GPU, and on CPU under
TRITON_INTERPRET=1).
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
    HAVE_TRITON = True
except ImportError:  # CPU-only installs
    HAVE_TRITON = False

BLOCK_N = 64  # keys per inner step
MIN_CHUNK = 256  # keys per program at least: below it the partial results cost more traffic than they save
MAX_CHUNKS = 128  # chunks a pair at most: the merge reads them in one load
_SMS: dict = {}
_WORK: dict = {}  # per device: the partial results' buffers, reused step after step

if HAVE_TRITON:
    # Lengths and slots change every step: compiled once for any value, not per divisibility class.
    @triton.jit(do_not_specialize=["SF", "CHUNK_F", "LEN_F", "SS", "CHUNK_S", "LEN_S", "SLOT_S"])
    def _decode(Q, K1, V1, O, KF, VF, KS, VS, ROWS, HEADS, M_W, L_W, ACC_W, ARRIVED, qk_scale,
                HK, CAP_F, WIDTH_S, NF, SF, CHUNK_F, LEN_F, SS, CHUNK_S, LEN_S, SLOT_S,
                G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_S: tl.constexpr):
        pid = tl.program_id(0)
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
        m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_G], tl.float32)
        acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
        for n0 in range(0, chunk, BLOCK_N):  # the last chunk of a pair may run past the keys: masked
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
        tl.store(M_W + pid * BLOCK_G + offs_g, m_i)
        tl.store(L_W + pid * BLOCK_G + offs_g, l_i)
        tl.store(ACC_W + (pid * BLOCK_G + offs_g[:, None]) * HEAD_DIM + offs_d[None, :], acc)

        # The pair's last chunk to finish merges them all (acq_rel: it sees every chunk's stores).
        if tl.atomic_add(ARRIVED + pair, 1) == chunks - 1:
            tl.store(ARRIVED + pair, 0)  # ready for the next step
            k1 = tl.load(K1 + kv_row * HEAD_DIM + offs_d)
            v1 = tl.load(V1 + kv_row * HEAD_DIM + offs_d)
            offs_s = tl.arange(0, BLOCK_S)
            part = first + offs_s
            s_ok = offs_s < chunks  # at most BLOCK_S chunks a pair: one load each
            for gi in tl.static_range(G):
                q_g = tl.load(Q + (q_row + gi) * HEAD_DIM + offs_d).to(tl.float32)
                s_new = tl.sum(q_g * k1.to(tl.float32), 0) * qk_scale  # the new token: every head sees it
                m_c = tl.load(M_W + part * BLOCK_G + gi, mask=s_ok, other=float("-inf"), cache_modifier=".cg")
                l_c = tl.load(L_W + part * BLOCK_G + gi, mask=s_ok, other=0.0, cache_modifier=".cg")
                a_c = tl.load(ACC_W + (part[:, None] * BLOCK_G + gi) * HEAD_DIM + offs_d[None, :],
                              mask=s_ok[:, None], other=0.0, cache_modifier=".cg")
                top = tl.maximum(tl.max(m_c, 0), s_new)  # finite: s_new is
                w_c = tl.math.exp2(m_c - top)
                w_new = tl.math.exp2(s_new - top)
                den = tl.sum(l_c * w_c, 0) + w_new
                num = tl.sum(a_c * w_c[:, None], 0) + v1.to(tl.float32) * w_new
                tl.store(O + (q_row + gi) * HEAD_DIM + offs_d, (num / den).to(O.dtype.element_ty))
            # the new token into its slot: no chunk of this step reads it (FA: past the keys; SSA: skipped)
            tl.store(k_base + slot.to(tl.int64) * HEAD_DIM + offs_d, k1)
            tl.store(v_base + slot.to(tl.int64) * HEAD_DIM + offs_d, v1)


def _sm_count(device) -> int:
    if device.type != "cuda":
        return 16  # the interpreter on a CPU: any figure gives the same result
    if device not in _SMS:
        _SMS[device] = torch.cuda.get_device_properties(device).multi_processor_count
    return _SMS[device]


def _chunks(length: int, pairs: int, programs: int) -> tuple[int, int]:
    """(keys a chunk, chunks a pair): the pairs' keys spread over about `programs` programs, in whole
    BLOCK_Ns, at least MIN_CHUNK keys and at most MAX_CHUNKS chunks a pair."""
    if pairs == 0 or length == 0:
        return MIN_CHUNK, 1
    per_pair = min(MAX_CHUNKS, max(1, -(-programs // pairs)), -(-length // MIN_CHUNK))
    chunk = -(-length // per_pair)
    chunk = -(-chunk // BLOCK_N) * BLOCK_N
    return chunk, -(-length // chunk)


def _workspace(device, parts: int, pairs: int, block_g: int, d: int):
    """m, l [parts, block_g], acc [parts, block_g, d] (fp32) and the arrival counters [pairs] (int32, zero
    between steps: the kernel resets them), views of buffers kept per device. A step's kernel uses them
    in stream order, so the next step may reuse them; decode steps on two streams of one device at once
    would share them (generation runs on one stream)."""
    need = parts * block_g * (d + 2)
    work = _WORK.get(device)
    if work is None or work[0].numel() < need or work[1].numel() < pairs:
        work = _WORK[device] = (torch.empty(max(need, 1 << 20), device=device, dtype=torch.float32),
                                torch.zeros(max(pairs, 1024), device=device, dtype=torch.int32))
    buf, arrived = work
    n = parts * block_g
    return (buf[:n].view(parts, block_g), buf[n:2 * n].view(parts, block_g),
            buf[2 * n:need].view(parts, block_g, d), arrived)


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
    programs = 4 * _sm_count(query.device)
    chunk_f, sf = _chunks(fa_len, n_fa, programs)
    chunk_s, ss = _chunks(ssa_len, n_ssa, programs)
    parts = n_fa * sf + n_ssa * ss
    block_g = max(16, triton.next_power_of_2(g))
    m, lsum, acc, arrived = _workspace(query.device, parts, n_fa + n_ssa, block_g, d)
    out = torch.empty_like(query)
    _decode[(parts,)](query, key, value, out, fa_keys, fa_values, ssa_keys, ssa_values, rows, heads,
                      m, lsum, acc, arrived, scale * 1.4426950408889634,  # base-2 exponent
                      hk, fa_keys.shape[1], ssa_keys.shape[1], n_fa, sf, chunk_f, fa_len, ss, chunk_s, ssa_len,
                      ssa_slot, G=g, HEAD_DIM=d, BLOCK_G=block_g, BLOCK_N=BLOCK_N, BLOCK_S=MAX_CHUNKS,
                      num_warps=4)
    return out
