"""mlm_mask: bit-identical backends, batch-composition independence, statistics, errors."""
import math

import pytest
import torch

from ptft_engine.ops import BackendUnavailable, _native, mlm_mask
from ptft_engine.ops.mlm.philox import philox4x32

HAS_CUDA = torch.cuda.is_available()
VOCAB = 1000
SPECIAL = [0, 1, 2, 3, 4]  # 0 is padding, 4 is [MASK]
MASK_ID = 4


def _batch(rows, seq, seed=0, vocab=VOCAB, pad=3):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (rows, seq), generator=g)
    ids[:, 0] = 2  # [CLS]
    if seq > pad + 1:
        ids[:, -pad:] = 0  # padding tail
    sids = torch.randint(0, 2**62, (rows,), generator=g)
    return ids, sids


def _run(ids, sids, backend, seed=0, **kw):
    args = dict(seed=seed, sample_ids=sids, mask_token_id=MASK_ID, vocab_size=VOCAB, special_token_ids=SPECIAL)
    args.update(kw)
    return mlm_mask(ids, backend=backend, **args)


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_philox_known_answer():
    # Random123 known-answer vectors for Philox4x32-10
    t = lambda v: torch.tensor([v], dtype=torch.int64)  # noqa: E731
    out = philox4x32(t(0x243F6A88), t(0x85A308D3), t(0x13198A2E), t(0x03707344), 0xA4093822, 0x299F31D0)
    assert [int(v) for v in out] == [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]
    out = philox4x32(*(t(0xFFFFFFFF),) * 4, 0xFFFFFFFF, 0xFFFFFFFF)
    assert [int(v) for v in out] == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]


@pytest.mark.parametrize("seed", [0, 1, 2**32 + 17, 2**64 - 1])
@pytest.mark.parametrize("shape", [(4, 33), (1, 1), (3, 257), (7, 512),
                                   pytest.param((40, 1000), marks=pytest.mark.slow)])  # last: several threads
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_cpu_bit_identical_to_reference(seed, shape, dtype):
    if shape[0] * shape[1] > 16384:
        torch.set_num_threads(2)  # rows split over threads (one_torch_thread restores the count)
    ids, sids = _batch(*shape, seed=seed % 1000)
    ids = ids.to(dtype)
    kw = dict(mask_prob=0.4, replace_prob=0.5, random_prob=0.3)  # all three outcomes frequent
    ref = _run(ids, sids, "reference", seed, **kw)
    cpu = _run(ids, sids, "cpu", seed, **kw)
    assert ref[0].dtype == dtype and ref[1].dtype == dtype
    assert _same(ref, cpu)
    if ids.numel() > 100:  # the outcome mix is exercised, not vacuous
        assert (ref[1] != -100).any() and (ref[0] == MASK_ID).any()


@pytest.mark.parametrize("seed", [3, 2**63 + 5])
@pytest.mark.parametrize("shape", [(3, 37), (2, 130), (1, 1)])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_triton_bit_identical_to_reference(seed, shape, dtype):
    ids, sids = _batch(*shape, seed=seed % 1000)
    ids = ids.to(dtype)
    kw = dict(mask_prob=0.5, replace_prob=0.4, random_prob=0.4)
    assert _same(_run(ids, sids, "reference", seed, **kw), _run(ids, sids, "triton", seed, **kw))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_independent_of_batch_composition(backend):
    ids, sids = _batch(8, 200, seed=5)
    full = _run(ids, sids, backend, seed=11)
    perm = torch.randperm(8)
    permuted = _run(ids[perm], sids[perm], backend, seed=11)
    assert _same((full[0][perm], full[1][perm]), permuted)
    # a sample alone in its batch gets the masks it got among others
    alone = _run(ids[5:6], sids[5:6], backend, seed=11)
    assert _same((full[0][5:6], full[1][5:6]), alone)
    # a different seed or sample id changes the masks
    assert not torch.equal(_run(ids, sids, backend, seed=12)[1], full[1])
    assert not torch.equal(_run(ids, sids + 1, backend, seed=11)[1], full[1])


def test_triton_independent_of_batch_composition():
    ids, sids = _batch(4, 40, seed=6)
    full = _run(ids, sids, "triton", seed=9)
    perm = torch.tensor([2, 0, 3, 1])
    assert _same((full[0][perm], full[1][perm]), _run(ids[perm], sids[perm], "triton", seed=9))


def _within(count, n, p, sigmas=5.0):
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def test_selection_rate_and_80_10_10_split():
    ids, sids = _batch(256, 1024, seed=1, pad=100)
    masked, labels = _run(ids, sids, "cpu", seed=2024)
    selectable = ~torch.isin(ids, torch.tensor(SPECIAL))
    selected = labels != -100
    n_sel, n_ok = int(selected.sum()), int(selectable.sum())
    assert _within(n_sel, n_ok, 0.15), (n_sel, n_ok)
    to_mask = selected & (masked == MASK_ID)
    changed = selected & (masked != MASK_ID) & (masked != ids)
    unchanged = selected & (masked == ids)
    assert _within(int(to_mask.sum()), n_sel, 0.8)
    # a random draw equals the original id with probability 1/995: account for it
    p_random_changed = 0.1 * (1 - 1 / (VOCAB - len(SPECIAL)))
    assert _within(int(changed.sum()), n_sel, p_random_changed)
    assert _within(int(unchanged.sum()), n_sel, 1 - 0.8 - p_random_changed)
    # random replacements are spread over the non-special vocabulary
    drawn = masked[changed]
    assert drawn.unique().numel() > 0.9 * (VOCAB - len(SPECIAL))
    assert not (masked != ids)[~selected].any()


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_special_tokens_never_selected_nor_produced(backend):
    special = [0, 1, 2, 3, 4, 500, 999]
    ids, sids = _batch(32, 300, seed=3)
    ids[:, 10:20] = 500
    masked, labels = _run(ids, sids, backend, seed=4, special_token_ids=special, mask_prob=0.9, random_prob=0.5,
                          replace_prob=0.1)
    is_special = torch.isin(ids, torch.tensor(special))
    assert (labels[is_special] == -100).all()
    assert torch.equal(masked[is_special], ids[is_special])
    produced = masked[(labels != -100) & (masked != ids)]
    assert produced.numel() > 1000
    assert not torch.isin(produced[produced != MASK_ID], torch.tensor(special)).any()
    assert torch.equal(labels[labels != -100], ids[labels != -100])
    assert ((labels == -100) | (labels == ids)).all()


def test_probability_edges():
    ids, sids = _batch(4, 50, seed=8)
    selectable = ~torch.isin(ids, torch.tensor(SPECIAL))
    for backend in ("reference", "cpu"):
        _, labels = _run(ids, sids, backend, mask_prob=0.0)
        assert (labels == -100).all()
        masked, labels = _run(ids, sids, backend, mask_prob=1.0, replace_prob=1.0, random_prob=0.0)
        assert torch.equal(labels != -100, selectable)
        assert (masked[selectable] == MASK_ID).all()
        masked, _ = _run(ids, sids, backend, mask_prob=1.0, replace_prob=0.0, random_prob=0.0)
        assert torch.equal(masked, ids)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(mask_prob=1.5), "mask_prob"),
        (dict(replace_prob=-0.1), "replace_prob"),
        (dict(replace_prob=0.8, random_prob=0.3), "replace_prob \\+ random_prob"),
        (dict(mask_token_id=VOCAB), "mask_token_id"),
        (dict(special_token_ids=[VOCAB + 3]), "special_token_ids"),
        (dict(seed=-1), "seed"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(special_token_ids=list(range(VOCAB))), "every id"),
        (dict(sample_ids=torch.arange(3)), "sample_ids"),
        (dict(sample_ids=torch.zeros(4)), "sample_ids"),
        (dict(special_token_ids=[0, 1.5]), "special_token_ids"),
    ],
)
def test_argument_errors(kw, match):
    ids, sids = _batch(4, 20)
    args = dict(seed=0, sample_ids=sids, mask_token_id=MASK_ID, vocab_size=VOCAB, special_token_ids=SPECIAL)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        mlm_mask(ids, backend="reference", **args)


def test_tensor_errors():
    ids, sids = _batch(2, 10)
    with pytest.raises(ValueError, match="input_ids must be int64 or int32"):
        _run(ids.float(), sids, "reference")
    with pytest.raises(ValueError, match="input_ids must be a \\(batch, seq\\)"):
        _run(ids[0], sids, "reference")
    bad = ids.clone()
    bad[0, 0] = VOCAB
    with pytest.raises(ValueError, match="input_ids must lie in"):
        _run(bad, sids, "reference")
    with pytest.raises(BackendUnavailable):
        _run(ids, sids, "cuda")


def test_empty_batch():
    ids = torch.zeros(0, 7, dtype=torch.int64)
    masked, labels = _run(ids, torch.zeros(0, dtype=torch.int64), "reference")
    assert masked.shape == labels.shape == (0, 7)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_gpu_bit_identical_to_cpu(backend, dtype):
    ids, sids = _batch(70000, 77, seed=10)  # > 65535 rows: both kernels stride over grid y
    ids = ids.to(dtype)
    kw = dict(mask_prob=0.4, replace_prob=0.5, random_prob=0.3)
    cpu = _run(ids, sids, "cpu" if _native.LOAD_ERROR is None else "reference", 2**63 + 1, **kw)
    gpu = _run(ids.cuda(), sids.cuda(), backend, 2**63 + 1, **kw)
    assert _same(cpu, (gpu[0].cpu(), gpu[1].cpu()))


@pytest.mark.gpu
def test_gpu_out_of_range_ids_never_selected():
    ids, sids = _batch(8, 64)
    ids[:, 5] = -7
    ids[:, 6] = VOCAB + 1
    outs = [_run(ids.cuda(), sids.cuda(), b, mask_prob=1.0) for b in ("cuda", "triton", "reference")]
    for masked, labels in outs:
        assert (labels[:, 5:7] == -100).all() and torch.equal(masked[:, 5:7].cpu(), ids[:, 5:7])
    assert _same(outs[0], outs[1]) and _same(outs[0], outs[2])


# --- an independent re-derivation: Philox4x32-10 and the masking rule in plain Python ints
_M32 = 0xFFFFFFFF


def _philox_py(c0, c1, c2, c3, k0, k1):
    """Random123's Philox4x32-10 written out from the paper (Python ints, no torch)."""
    for _ in range(10):
        prod_b, prod_a = 0xCD9E8D57 * c2, 0xD2511F53 * c0
        c0, c1, c2, c3 = (((prod_b >> 32) ^ c1 ^ k0) & _M32, prod_b & _M32,
                          ((prod_a >> 32) ^ c3 ^ k1) & _M32, prod_a & _M32)
        k0, k1 = (k0 + 0x9E3779B9) & _M32, (k1 + 0xBB67AE85) & _M32
    return c0, c1, c2, c3


def _mask_py(ids, sids, seed, special, mask_prob, replace_prob, random_prob, vocab=VOCAB):
    """The documented contract, token by token: expected (masked, labels) as nested lists."""
    t_sel, t_rep = int(mask_prob * 2**32), int(replace_prob * 2**32)
    t_rand_end = min(t_rep + int(random_prob * 2**32), 2**32)
    allowed = [i for i in range(vocab) if i not in special]
    masked, labels = [], []
    for row, sid in zip(ids, sids):
        out_row, lab_row = [], []
        for pos, tok in enumerate(row):
            u0, u1, u2, _ = _philox_py(pos, sid & _M32, sid >> 32, 0, seed & _M32, seed >> 32)
            if tok in special or u0 >= t_sel:
                out_row.append(tok)
                lab_row.append(-100)
                continue
            lab_row.append(tok)
            if u1 < t_rep:
                out_row.append(MASK_ID)
            elif u1 < t_rand_end:
                out_row.append(allowed[(u2 * len(allowed)) >> 32])
            else:
                out_row.append(tok)
        masked.append(out_row)
        labels.append(lab_row)
    return masked, labels


def test_python_philox_rederivation_matches_known_answers():
    # the test's own Philox must reproduce Random123's vectors before it can judge the kernels
    assert _philox_py(0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344, 0xA4093822, 0x299F31D0) == (
        0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)
    assert _philox_py(0, 0, 0, 0, 0, 0) == (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)


def _tail_backends():
    out = ["reference", "cpu"]
    if _native.LOAD_ERROR is not None:
        out.remove("cpu")
    return out + ["triton"]


# Real tokens up to the last position: the 8-wide C++ loop leaves 1..7 positions to its
# scalar tail (77 = 9*8+5; 300 = 256 + 5*8+4; 263 = 256 + 7), and Triton masks its block edge.
@pytest.mark.parametrize("shape", [(5, 77), (2, 300), (3, 13), (1, 7), (2, 263), (4, 9)])
@pytest.mark.parametrize("backend", _tail_backends())
def test_every_position_matches_a_plain_python_rederivation(shape, backend):
    rows, seq = shape
    g = torch.Generator().manual_seed(rows * 1000 + seq)
    ids = torch.randint(5, VOCAB, shape, generator=g)
    ids[:, seq // 2] = 3  # one special token mid-row: never selected
    sids = torch.randint(0, 2**62, (rows,), generator=g)
    seed = 2**63 + 12345
    kw = dict(mask_prob=0.6, replace_prob=0.4, random_prob=0.4)
    masked, labels = _run(ids, sids, backend, seed, **kw)
    exp_masked, exp_labels = _mask_py(ids.tolist(), sids.tolist(), seed, set(SPECIAL), **kw)
    assert masked.tolist() == exp_masked
    assert labels.tolist() == exp_labels
    # not vacuous: the last positions (the vector loop's tail) hold selected, changed tokens
    tail = slice(max(0, seq - 7), seq)
    assert (labels[:, tail] != -100).any() and (masked[:, tail] != ids[:, tail]).any()


@pytest.mark.parametrize("backend", _tail_backends())
def test_thresholds_are_strict_at_the_exact_boundary(backend):
    # choose p so that T(p) equals this token's own draw: "u < T(p)" must then be false
    ids, sids = torch.tensor([[7, 8, 9]]), torch.tensor([12345])
    seed, pos = 99, 1
    u0, u1, _, _ = _philox_py(pos, 12345, 0, 0, seed, 0)
    at = lambda p, **kw: _run(ids, sids, backend, seed, **{"mask_prob": p, **kw})  # noqa: E731
    assert at(u0 / 2**32)[1][0, pos] == -100  # u0 == T(mask_prob): not selected
    assert at(min(1.0, (u0 + 1) / 2**32))[1][0, pos] == 8  # one step above: selected
    masked, labels = at(1.0, replace_prob=u1 / 2**32, random_prob=0.0)
    assert labels[0, pos] == 8 and masked[0, pos] == 8  # u1 == T(replace_prob): kept, not [MASK]
    masked, _ = at(1.0, replace_prob=(u1 + 1) / 2**32, random_prob=0.0)
    assert masked[0, pos] == MASK_ID


def test_reference_never_selects_ids_outside_the_vocabulary():
    # the CUDA path skips the range check; the reference spec must still leave such ids alone
    from ptft_engine.ops.mlm.reference import make_plan, mlm_mask_reference

    plan = make_plan(seed=1, mask_token_id=MASK_ID, vocab_size=VOCAB, special_token_ids=[1], mask_prob=1.0,
                     replace_prob=1.0, random_prob=0.0)
    ids = torch.tensor([[-7, 0, VOCAB, VOCAB + 1, 5, 1]])
    masked, labels = mlm_mask_reference(ids, torch.tensor([3]), plan)
    assert labels.tolist() == [[-100, 0, -100, -100, 5, -100]]  # id 0 is not special here: selected
    assert masked.tolist() == [[-7, MASK_ID, VOCAB, VOCAB + 1, MASK_ID, 1]]


@pytest.mark.parametrize("kw, match", [
    (dict(seed=2**64), "seed must be"), (dict(seed=True), "seed must be"),
    (dict(vocab_size=0), "vocab_size must be"), (dict(vocab_size=2**31), "vocab_size must be"),
    (dict(vocab_size=True), "vocab_size must be"), (dict(mask_token_id=-1), "mask_token_id must be"),
    (dict(special_token_ids=list(range(VOCAB)), random_prob=2**-32), "every id"),
])
def test_scalar_argument_edges(kw, match):
    ids, sids = _batch(2, 6)
    args = dict(seed=0, sample_ids=sids, mask_token_id=MASK_ID, vocab_size=VOCAB, special_token_ids=SPECIAL)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        mlm_mask(ids, backend="reference", **args)
