"""The pure functions of mergekit_led.election against the spec and tests/reference.py."""

from __future__ import annotations

import itertools
import math

import pytest
import reference as ref
import torch

from mergekit_led.core import elect_merge as el
from mergekit_led.core.statistics import weight_stats


def tied_scores(shape, seed, levels=6, zero_share=None):
    g = torch.Generator().manual_seed(seed)
    values = torch.randint(0, levels, shape, generator=g).to(torch.float32)
    if zero_share is not None:
        values[torch.rand(shape, generator=g) < zero_share] = 0.0
    return values


def continuous_scores(shape, seed, zero_share=0.2):
    g = torch.Generator().manual_seed(seed)
    values = torch.rand(shape, generator=g)
    values[torch.rand(shape, generator=g) < zero_share] = 0.0
    return values


# --------------------------------------------------------------------------- top(S, r)


def test_top_worked_example():
    s = torch.tensor([3.0, 2.0, 2.0, 1.0, 0.0, 0.0])
    # N = 6
    assert ref.top_set(s, 0.5).tolist() == [True, True, True, False, False, False]
    # k = 2: t = 2, the tie at 2 is included whole
    assert el.top_mask(s, 2 / 6).tolist() == [True, True, True, False, False, False]
    # k = 1: t = 3
    assert el.top_mask(s, 1 / 6).tolist() == [True, False, False, False, False, False]
    # k = 4: t = 1
    assert el.top_mask(s, 4 / 6).tolist() == [True, True, True, True, False, False]
    # k = 6: t = 0, zeros are still never elected
    assert el.top_mask(s, 1.0).tolist() == [True, True, True, True, False, False]
    # k = 5: t = 0 as well
    assert el.top_mask(s, 5 / 6).tolist() == [True, True, True, True, False, False]
    # k = floor(0.1 * 6) = 0: the empty set
    assert el.top_mask(s, 0.1).tolist() == [False] * 6


def test_top_k_zero_is_empty_even_for_positive_scores():
    s = torch.rand(7, 9) + 1.0
    for ratio in (0.0, 1e-9, 1 / 64, (1 - 1e-9) / 63):
        assert ref.elected_k(63, ratio) == 0
        mask = el.top_mask(s, ratio)
        assert mask.dtype == torch.bool and mask.shape == s.shape
        assert not mask.any(), ratio


def test_zero_scores_never_elected():
    zeros = torch.zeros(5, 4)
    for ratio in (0.05, 0.5, 1.0):
        assert not el.top_mask(zeros, ratio).any()
    partly = torch.tensor([[0.0, 0.5], [0.0, 0.0]])
    assert el.top_mask(partly, 1.0).tolist() == [[False, True], [False, False]]


def test_all_tied_positive_scores_all_elected():
    s = torch.full((4, 8), 0.25)
    for ratio in (1 / 32, 0.3, 1.0):
        assert el.top_mask(s, ratio).all()


def test_elected_count_is_floor():
    for numel in (1, 7, 96, 3072):
        for ratio in (0.0, 0.1, 0.25, 0.5, 0.999, 1.0):
            assert el.elected_count(numel, ratio) == math.floor(ratio * numel)


def test_naive_and_vectorised_reference_agree():
    for seed in range(4):
        s = tied_scores((12, 10), seed) if seed % 2 else continuous_scores((12, 10), seed)
        for ratio in (0.0, 0.05, 0.3, 0.77, 1.0):
            assert torch.equal(ref.top_set(s, ratio), ref.top_set_fast(s, ratio))


@pytest.mark.parametrize("kind", ["tied", "continuous", "sparse_tied", "all_zero"])
def test_top_mask_matches_reference_on_many_ratios(kind):
    g = torch.Generator().manual_seed(7)
    shapes = [(1,), (3,), (32,), (17, 5), (64, 32), (2, 3, 4)]
    for i, shape in enumerate(shapes):
        if kind == "tied":
            s = tied_scores(shape, i)
        elif kind == "continuous":
            s = continuous_scores(shape, i)
        elif kind == "sparse_tied":
            s = tied_scores(shape, i, levels=3, zero_share=0.7)
        else:
            s = torch.zeros(shape)
        n = s.numel()
        ratios = [0.0, 1.0, 1 / n, (n - 1) / n, 0.5] + torch.rand(25, generator=g).tolist()
        for ratio in ratios:
            expected = ref.top_set_fast(s, ratio)
            got = el.top_mask(s, ratio)
            assert got.shape == s.shape and got.dtype == torch.bool
            assert torch.equal(got, expected), (kind, shape, ratio)


def test_top_mask_does_not_modify_scores():
    s = tied_scores((8, 8), 3)
    copy = s.clone()
    el.top_mask(s, 0.4)
    assert torch.equal(s, copy)


# --------------------------------------------------------------------------- election


@pytest.mark.parametrize("election", ref.ELECTIONS)
def test_elect_matches_spec_table(election):
    a = torch.tensor([True, True, False, False])
    b = torch.tensor([True, False, True, False])
    expected = {
        "both": [True, False, False, False],
        "model_only": [False, True, False, False],
        "base_only": [False, False, True, False],
    }[election]
    assert el.elect(a, b, election).tolist() == expected
    assert el.elect(a, b, el.Election(election)).tolist() == expected


@pytest.mark.parametrize("election", ref.ELECTIONS)
def test_elect_from_scores_matches_reference(election):
    for seed in range(5):
        ms = tied_scores((16, 12), seed)
        bs = continuous_scores((16, 12), 50 + seed)
        for ratio in (0.1, 0.35, 0.8, 1.0):
            got = el.elect(el.top_mask(ms, ratio), el.top_mask(bs, ratio), election)
            assert torch.equal(got, ref.elect_set(ms, bs, ratio, election))


def test_unknown_election_is_refused():
    a = torch.ones(3, dtype=torch.bool)
    with pytest.raises(ValueError):
        el.elect(a, a, "either")


# --------------------------------------------------------------------------- disjoint


def test_disjoint_one_model_changes_nothing():
    m = torch.tensor([True, False, True])
    (out,) = el.disjoint([m])
    assert torch.equal(out, m)


@pytest.mark.parametrize("count", [2, 3, 4])
def test_disjoint_matches_reference(count):
    g = torch.Generator().manual_seed(count)
    for _ in range(5):
        masks = [torch.rand(9, 7, generator=g) < 0.5 for _ in range(count)]
        got = el.disjoint(masks)
        expected = ref.disjoint_sets(masks)
        assert len(got) == count
        for a, b in zip(got, expected):
            assert torch.equal(a, b)
        # pairwise disjoint, and an element chosen by two or more is dropped from all
        for a, b in itertools.combinations(got, 2):
            assert not (a & b).any()
        votes = sum(m.to(torch.int64) for m in masks)
        union = torch.zeros_like(masks[0])
        for m in got:
            union |= m
        assert torch.equal(union, votes == 1)


def test_disjoint_worked_example():
    n1 = torch.tensor([1, 1, 0, 1], dtype=torch.bool)
    n2 = torch.tensor([1, 0, 1, 0], dtype=torch.bool)
    n3 = torch.tensor([0, 0, 0, 1], dtype=torch.bool)
    t1, t2, t3 = el.disjoint([n1, n2, n3])
    assert t1.tolist() == [False, True, False, False]
    assert t2.tolist() == [False, False, True, False]
    assert t3.tolist() == [False, False, False, False]


# --------------------------------------------------------------------------- merge


def _family(shape, count, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g) * 0.02
    fts = [base + torch.randn(shape, generator=g) * 0.02 for _ in range(count)]
    return base.to(dtype), [t.to(dtype) for t in fts]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("count", [1, 2, 3])
@pytest.mark.parametrize("weights_kind", ["ones", "other"])
def test_merge_masked_disjoint_matches_reference(dtype, count, weights_kind):
    base, fts = _family((24, 16), count, dtype, seed=count)
    g = torch.Generator().manual_seed(99)
    masks = ref.disjoint_sets([torch.rand(24, 16, generator=g) < 0.4 for _ in range(count)])
    weights = [1.0] * count if weights_kind == "ones" else [0.7, 1.3, -0.4][:count]
    out = el.merge_masked(base, fts, masks, weights)
    ref.assert_matches_reference(out, base, fts, masks, weights, exact=True)
    if weights_kind == "ones" and dtype != torch.float32:
        # half-precision values: theta - base and base + tau are exact in float32
        for ft, m in zip(fts, masks):
            assert torch.equal(out[m], ft[m])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merge_masked_overlapping_masks(dtype):
    base, fts = _family((20, 20), 3, dtype, seed=5)
    g = torch.Generator().manual_seed(5)
    masks = [torch.rand(20, 20, generator=g) < 0.6 for _ in range(3)]
    weights = [0.5, 1.0, 2.0]
    out = el.merge_masked(base, fts, masks, weights)
    ref.assert_matches_reference(out, base, fts, masks, weights, exact=False)


def test_merge_masked_empty_masks_is_base_bit_for_bit():
    base, fts = _family((10, 10), 2, torch.bfloat16)
    masks = [torch.zeros(10, 10, dtype=torch.bool)] * 2
    out = el.merge_masked(base, fts, masks, [1.0, 3.0])
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, base)


def test_merge_masked_keeps_base_bits_outside_masks():
    base = torch.tensor([-0.0, 1e-30, 1.0, 2.0])
    ft = torch.tensor([5.0, 5.0, 5.0, 5.0])
    mask = torch.tensor([False, False, True, False])
    out = el.merge_masked(base, [ft], [mask], [1.0])
    expected = torch.tensor([-0.0, 1e-30, 5.0, 2.0])
    assert torch.equal(out.view(torch.int32), expected.view(torch.int32))


def test_merge_masked_does_not_modify_inputs():
    base, fts = _family((6, 6), 2, torch.float32)
    copies = [base.clone()] + [t.clone() for t in fts]
    masks = [torch.ones(6, 6, dtype=torch.bool), torch.zeros(6, 6, dtype=torch.bool)]
    el.merge_masked(base, fts, masks, [0.5, 1.0])
    for a, b in zip([base] + fts, copies):
        assert torch.equal(a, b)


def test_full_pipeline_pure_functions_match_reference():
    """top -> elect -> disjoint -> merge, every election, disjoint on/off, 1-3 models."""
    shape = (32, 24)
    base, fts = _family(shape, 3, torch.float32, seed=11)
    ms = [tied_scores(shape, 20 + i) for i in range(3)]
    bs = [continuous_scores(shape, 30 + i) for i in range(3)]
    densities = [0.3, 0.5, 0.2]
    weights = [1.0, 0.6, 1.5]
    for count, election, disjoint in itertools.product((1, 2, 3), ref.ELECTIONS, (True, False)):
        sets = [
            el.elect(el.top_mask(ms[i], densities[i]), el.top_mask(bs[i], densities[i]), election)
            for i in range(count)
        ]
        if disjoint:
            sets = el.disjoint(sets)
        out = el.merge_masked(base, fts[:count], sets, weights[:count])
        expected, ref_sets = ref.led_merge_tensor(
            base,
            fts[:count],
            ms[:count],
            bs[:count],
            densities[:count],
            weights[:count],
            election,
            disjoint,
        )
        for a, b in zip(sets, ref_sets):
            assert torch.equal(a, b), (count, election, disjoint)
        ref.assert_matches_reference(
            out, base, fts[:count], ref_sets, weights[:count], exact=disjoint or count == 1
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merge_masked_disjoint_fast_path_same_result(dtype):
    """If merge_masked offers a shortcut for disjoint masks, it gives the same bits."""
    import inspect

    if "masks_disjoint" not in inspect.signature(el.merge_masked).parameters:
        pytest.skip("no masks_disjoint shortcut")
    base, fts = _family((30, 20), 3, dtype, seed=8)
    g = torch.Generator().manual_seed(8)
    masks = ref.disjoint_sets([torch.rand(30, 20, generator=g) < 0.5 for _ in range(3)])
    for weights in ([1.0, 1.0, 1.0], [0.3, -1.2, 2.5]):
        slow = el.merge_masked(base, fts, masks, weights)
        fast = el.merge_masked(base, fts, masks, weights, masks_disjoint=True)
        assert torch.equal(slow, fast)
        ref.assert_matches_reference(fast, base, fts, masks, weights, exact=True)


# --------------------------------------------------------------------------- fused, chunked


def _composed(base, fts, tops, weights, election, disjoint):
    """Sections 2-4 step by step on whole tensors: what ``elect_and_merge`` must equal."""
    elected = [el.elect(m, b, election) for m, b in tops]
    kept = el.disjoint(elected) if disjoint else elected
    merged = el.merge_masked(base, fts, kept, weights, masks_disjoint=disjoint or len(elected) == 1)
    return merged, elected, kept


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("count", [1, 2, 3])
@pytest.mark.parametrize("chunk", [64, 1000, None])
def test_elect_and_merge_is_the_composition_bit_for_bit(monkeypatch, dtype, count, chunk):
    """Chunk seams anywhere (64, an odd 1000, or whole) give the same bits and counts."""
    if chunk is not None:
        monkeypatch.setattr(el, "merge_chunk_size", lambda: chunk)
    shape = (37, 53)  # not a multiple of any chunk
    base, fts = _family(shape, count, dtype, seed=count)
    base.view(-1)[:3] = torch.tensor([-0.0, 0.0, -1e-30]).to(dtype)  # signed zeros survive
    g = torch.Generator().manual_seed(count)
    tops = [
        (torch.rand(shape, generator=g) < 0.5, torch.rand(shape, generator=g) < 0.5)
        for _ in range(count)
    ]
    for election, disjoint, weights in itertools.product(
        ref.ELECTIONS, (True, False), ([1.0] * count, [0.7, -1.3, 2.5][:count])
    ):
        expected, elected, kept = _composed(base, fts, tops, weights, election, disjoint)
        merged, stats = el.elect_and_merge(
            base, fts, tops, weights, election, disjoint_step=disjoint, statistics_name="w"
        )
        assert merged.dtype == dtype and merged.shape == shape
        assert torch.equal(merged.view(-1).view(torch.uint8), expected.view(-1).view(torch.uint8))
        assert stats == weight_stats("w", elected, kept)
        unrecorded, none = el.elect_and_merge(
            base, fts, tops, weights, election, disjoint_step=disjoint
        )
        assert none is None and torch.equal(unrecorded, merged)


def test_elect_and_merge_takes_strided_inputs(monkeypatch):
    monkeypatch.setattr(el, "merge_chunk_size", lambda: 100)
    base, fts = _family((40, 30), 2, torch.float32, seed=4)
    base_t, fts_t = base.t(), [t.t() for t in fts]  # non-contiguous views
    g = torch.Generator().manual_seed(4)
    tops = [(torch.rand(30, 40, generator=g) < 0.5, torch.rand(30, 40, generator=g) < 0.5)] * 2
    expected, _, _ = _composed(base_t, fts_t, tops, [1.0, 0.5], "both", True)
    merged, _ = el.elect_and_merge(base_t, fts_t, tops, [1.0, 0.5], "both")
    assert torch.equal(merged, expected)
    assert torch.equal(base, _family((40, 30), 2, torch.float32, seed=4)[0])  # inputs untouched


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_where_blend_is_torch_where_bit_for_bit(dtype):
    bits = {torch.float64: torch.int64, torch.float32: torch.int32}.get(dtype, torch.int16)
    g = torch.Generator().manual_seed(1)
    # Every bit pattern the integer type can hold: NaN payloads, infinities, signed zeros.
    info = torch.iinfo(bits)
    chosen = torch.randint(info.min, info.max, (4096,), generator=g, dtype=torch.int64)
    other = torch.randint(info.min, info.max, (4096,), generator=g, dtype=torch.int64)
    chosen, other = chosen.to(bits).view(dtype), other.to(bits).view(dtype)
    mask = torch.rand(4096, generator=g) < 0.5
    blended = el._where(mask, chosen, other)
    assert torch.equal(blended.view(bits), torch.where(mask, chosen, other).view(bits))


def test_elect_and_merge_of_a_scalar_weight():
    base, ft = torch.tensor(1.0), torch.tensor(3.0)
    tops = [(torch.tensor(True), torch.tensor(True))]
    merged, stats = el.elect_and_merge(base, [ft], tops, [0.5], "both", statistics_name="s")
    assert merged.shape == () and float(merged) == 2.0
    assert stats.elected == [1] and stats.kept == [1]


# --------------------------------------------------------------------------- chunks on worker threads


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize(
    "shape, chunk",
    [
        ((37, 53), 64),  # many chunks, the last one short
        ((37, 53), 1000),  # an odd chunk size
        ((11, 8937), None),  # the real chunk size: 3 whole chunks and 3 elements
    ],
)
@pytest.mark.parametrize("workers", [1, 3])
def test_elect_and_merge_on_worker_threads_is_the_reference_bit_for_bit(
    monkeypatch, dtype, shape, chunk, workers
):
    """Any chunk seam and any number of worker threads give the reference's bits:
    the straightforward whole-tensor merge of tests/reference.py where each element
    takes one task vector (disjoint), the composed pure functions everywhere."""
    if chunk is not None:
        monkeypatch.setattr(el, "merge_chunk_size", lambda: chunk)
    monkeypatch.setattr(el, "merge_workers", lambda numel: workers)
    count = 2
    base, fts = _family(shape, count, dtype, seed=7)
    g = torch.Generator().manual_seed(7)
    tops = [
        (torch.rand(shape, generator=g) < 0.6, torch.rand(shape, generator=g) < 0.6)
        for _ in range(count)
    ]
    compute = torch.promote_types(dtype, torch.float32)
    for election, disjoint, weights in itertools.product(
        ref.ELECTIONS, (True, False), ([1.0, 1.0], [0.7, -1.3])
    ):
        merged, stats = el.elect_and_merge(
            base, fts, tops, weights, election, disjoint_step=disjoint, statistics_name="w"
        )
        expected, elected, kept = _composed(base, fts, tops, weights, election, disjoint)
        assert torch.equal(merged.view(-1).view(torch.uint8), expected.view(-1).view(torch.uint8))
        assert stats == weight_stats("w", elected, kept)
        if disjoint:
            sets = ref.disjoint_sets([ref_elect(m, b, election) for m, b in tops])
            straightforward = ref.merge_tensor(base, fts, sets, weights, compute)
            assert torch.equal(
                merged.view(-1).view(torch.uint8), straightforward.view(-1).view(torch.uint8)
            )


def ref_elect(model_top, base_top, election):
    """Section 2's election from two top sets, as tests/reference.py writes it."""
    return {
        "both": model_top & base_top,
        "model_only": model_top & ~base_top,
        "base_only": base_top & ~model_top,
    }[str(el.Election(election).value)]


def test_map_chunks_keeps_order_and_uses_at_most_its_workers():
    import threading
    import time

    from mergekit_led.core import chunked

    running, peak, lock = [0], [0], threading.Lock()

    def work(piece):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.002)  # long enough for the workers to overlap
        with lock:
            running[0] -= 1
        return piece[0] * 10

    pieces = [(i, i + 1) for i in range(40)]
    assert chunked.map_chunks(work, pieces, 3) == [i * 10 for i in range(40)]
    assert 2 <= peak[0] <= 3
    peak[0] = 0
    assert chunked.map_chunks(work, pieces, 1) == [i * 10 for i in range(40)]
    assert peak[0] == 1


def test_map_chunks_raises_a_workers_error_after_every_worker_stopped():
    from mergekit_led.core import chunked

    done = []

    def work(piece):
        if piece[0] == 5:
            raise ValueError("piece 5")
        done.append(piece[0])
        return piece[0]

    with pytest.raises(ValueError, match="piece 5"):
        chunked.map_chunks(work, [(i, i + 1) for i in range(1000)], 2)
    assert len(done) < 999  # the others stopped early instead of finishing every piece
