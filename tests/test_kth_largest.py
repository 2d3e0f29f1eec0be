"""mergekit_led.core.kth_largest against a plain sort and the election it replaced
(``torch.kthvalue`` on the scores, copied below since ``election.top_mask`` is
now this selection).

Every test runs each case through the exact direct path, the sampled-bracket
path (forced on small tensors by lowering the size cut-off), and the bracket
path split into many small chunks over worker threads, so chunk seams, the
thread pool and the proof-by-counts all see ties, zeros and ``-0.0``.
"""

from __future__ import annotations

import math

import pytest
import torch

from mergekit_led.core import kth_largest as sel
from mergekit_led.errors import ScoreDomainError

DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
RATIOS = (0.0, 1e-9, 0.001, 0.1, 0.2, 1 / 3, 0.5, 0.77, 0.999, 1.0)


@pytest.fixture(params=["direct", "bracket", "bracket-chunked"])
def path(request, monkeypatch):
    """Which CPU code path the selection takes."""
    if request.param != "direct":
        monkeypatch.setattr(sel, "_DIRECT_MAX_NUMEL", 0)
    if request.param == "bracket-chunked":
        monkeypatch.setattr(sel, "_CHUNK", 1000)
        monkeypatch.setattr(sel, "_PARALLEL_MIN_NUMEL", 0)
    return request.param


# --------------------------------------------------------------------------- reference


def sorted_kth(scores: torch.Tensor, k: int) -> float:
    """The k-th largest by a plain descending sort (float64 holds every input exactly)."""
    return float(torch.sort(scores.reshape(-1).to(torch.float64), descending=True).values[k - 1])


def reference_mask(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """LED_SPEC section 2 written out: elements > 0 and >= the k-th largest."""
    flat = scores.reshape(-1).to(torch.float64)
    k = math.floor(ratio * flat.numel())
    if k == 0:
        return torch.zeros(scores.shape, dtype=torch.bool)
    t = sorted_kth(scores, k)
    return ((flat > 0) & (flat >= t)).reshape(scores.shape)


def kthvalue_top_mask(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """``election.top_mask`` before the selection (commit 4c55801), kept as a reference:
    the masks must stay bit-identical to it."""
    k = int(math.floor(ratio * scores.numel()))
    if k == 0:
        return torch.zeros(scores.shape, dtype=torch.bool)
    flat = scores.reshape(-1)
    threshold = float(torch.kthvalue(flat, flat.numel() - k + 1).values)
    return scores >= threshold if threshold > 0 else scores > 0


# --------------------------------------------------------------------------- inputs


def make_scores(kind: str, shape, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    numel = math.prod(shape)
    if kind == "continuous":
        values = torch.randn(numel, generator=g, dtype=torch.float64).abs()
    elif kind == "heavy_tail":
        values = (torch.randn(numel, generator=g) * torch.randn(numel, generator=g)).abs()
        values = values.double() ** 3
    elif kind == "ties":
        values = torch.randint(0, 5, (numel,), generator=g).double() / 4
    elif kind == "one_value":
        values = torch.full((numel,), 0.375, dtype=torch.float64)
    elif kind == "mostly_zero":
        values = torch.rand(numel, generator=g, dtype=torch.float64)
        values[torch.rand(numel, generator=g) < 0.9] = 0.0
    elif kind == "all_zero":
        values = torch.zeros(numel, dtype=torch.float64)
    elif kind == "tiny":  # subnormals of every dtype, and zeros
        smallest = torch.finfo(dtype).smallest_normal
        values = torch.randint(0, 4, (numel,), generator=g).double() * smallest / 8
    elif kind == "huge":
        values = torch.rand(numel, generator=g, dtype=torch.float64) * torch.finfo(dtype).max
    else:
        raise AssertionError(kind)
    scores = values.to(dtype)
    if kind in ("continuous", "ties", "mostly_zero", "all_zero", "tiny"):
        # Sprinkle -0.0: it must behave like 0.0 (never elected, ties with +0.0).
        flips = torch.rand(numel, generator=g) < 0.1
        scores[flips & (scores == 0)] = -0.0
        scores[torch.rand(numel, generator=g) < 0.05] = -0.0
    return scores.reshape(shape)


KINDS = (
    "continuous",
    "heavy_tail",
    "ties",
    "one_value",
    "mostly_zero",
    "all_zero",
    "tiny",
    "huge",
)
SHAPES = ((), (1,), (2,), (7, 3), (1000,), (33, 129), (4, 5, 600))


# --------------------------------------------------------------------------- kth_largest


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_kth_largest_equals_plain_sort(path, dtype, kind):
    for index, shape in enumerate(SHAPES):
        scores = make_scores(kind, shape, dtype, seed=index)
        numel = scores.numel()
        ks = sorted({1, 2, numel // 3, numel // 2, numel - 1, numel} & set(range(1, numel + 1)))
        for k in ks:
            got = sel.kth_largest(scores, k)
            assert isinstance(got, float)
            assert got == sorted_kth(scores, k), (shape, k)
            # The result is one of the tensor's own values, so `>=` against it is exact.
            assert bool((scores == got).any())


def test_kth_largest_rejects_k_out_of_range():
    scores = torch.rand(10)
    for k in (0, -1, 11):
        with pytest.raises(ValueError, match="1 <= k <= 10"):
            sel.kth_largest(scores, k)
    with pytest.raises(ValueError, match="1 <= k <= 0"):
        sel.kth_largest(torch.zeros(0), 1)


def test_kth_largest_of_non_contiguous_and_other_dtypes():
    base = make_scores("ties", (64, 96), torch.float32, seed=3)
    view = base.t()[::2]
    assert not view.is_contiguous()
    for k in (1, 7, view.numel()):
        assert sel.kth_largest(view, k) == sorted_kth(view, k)
    integers = torch.randint(0, 9, (50,))
    assert sel.kth_largest(integers, 5) == sorted_kth(integers, 5)


# --------------------------------------------------------------------------- top_mask


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_top_mask_equals_spec_and_todays_election(path, dtype, kind):
    for index, shape in enumerate(SHAPES):
        scores = make_scores(kind, shape, dtype, seed=100 + index)
        for ratio in RATIOS:
            got = sel.top_mask(scores, ratio)
            assert got.dtype == torch.bool and got.shape == scores.shape
            assert torch.equal(got, reference_mask(scores, ratio)), (shape, ratio)
            assert torch.equal(got, kthvalue_top_mask(scores, ratio)), (shape, ratio)


def test_top_mask_spec_cases():
    s = torch.tensor([3.0, 2.0, 2.0, 1.0, 0.0, -0.0])
    assert sel.top_mask(s, 2 / 6).tolist() == [True, True, True, False, False, False]
    assert sel.top_mask(s, 1 / 6).tolist() == [True, False, False, False, False, False]
    assert sel.top_mask(s, 1.0).tolist() == [True, True, True, True, False, False]
    assert sel.top_mask(s, 5 / 6).tolist() == [True, True, True, True, False, False]
    assert sel.top_mask(s, 0.1).tolist() == [False] * 6
    assert sel.top_mask(torch.tensor(0.5), 1.0).item() is True
    assert sel.top_mask(torch.tensor(0.5), 0.99).item() is False
    assert sel.top_mask(torch.tensor(-0.0), 1.0).item() is False
    assert sel.top_mask(torch.zeros(0), 0.5).shape == (0,)


def test_elected_count_matches_election():
    for numel in (0, 1, 7, 96, 3072, 58_720_256):
        for ratio in (0.0, 0.1, 0.2, 0.3, 0.25, 0.5, 0.7, 0.999, 1.0):
            assert sel.elected_count(numel, ratio) == int(math.floor(ratio * numel))


def test_top_mask_rejects_ratio_out_of_range():
    for ratio in (-0.5, 1.5):
        with pytest.raises(ValueError, match="ratio in \\[0, 1\\]"):
            sel.top_mask(torch.rand(10), ratio)


# --------------------------------------------------------------------------- sampled bracket


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("kind", ("heavy_tail", "ties", "mostly_zero"))
def test_large_tensors_through_the_threaded_pass(dtype, kind):
    # Above the size cut-offs of the direct path and of the thread pool.
    numel = sel._PARALLEL_MIN_NUMEL + 12_345
    scores = make_scores(kind, (numel,), dtype, seed=7)
    wide = scores.to(torch.float64)
    ordered = torch.sort(wide, descending=True).values  # the reference, sorted once
    for ratio in (0.01, 0.1, 0.5, 0.95, 1.0):
        k = sel.elected_count(numel, ratio)
        t = float(ordered[k - 1])
        assert sel.kth_largest(scores, k) == t, ratio
        assert torch.equal(sel.top_mask(scores, ratio), (wide > 0) & (wide >= t)), ratio


@pytest.mark.parametrize(
    "guess",
    ["far_above", "far_below", "just_above", "just_below", "empty", "one_wrong_value", "all"],
)
@pytest.mark.parametrize("kind", ("continuous", "ties", "mostly_zero", "one_value", "all_zero"))
def test_a_misleading_sample_only_costs_speed(monkeypatch, guess, kind):
    """Correctness never depends on the sample: any bracket gives the exact answer."""
    monkeypatch.setattr(sel, "_DIRECT_MAX_NUMEL", 0)
    scores = make_scores(kind, (3000,), torch.float32, seed=11)
    bits = scores.view(torch.int32)

    def hostile_bracket(values, k):
        t = sel._partition_kth(values, k)
        top = int(bits.max())
        if guess == "far_above":
            return top + 1, top + 100
        if guess == "far_below":
            return 1, 1
        if guess == "just_above":
            return max(t + 1, 1), max(t + 1, top)
        if guess == "just_below":
            return 1, max(t - 1, 0)
        if guess == "empty":
            return max(t, 1), max(t, 1) - 1
        if guess == "one_wrong_value":
            return max(t - 1, 1), max(t - 1, 1)
        return 1, top

    monkeypatch.setattr(sel, "_bracket", hostile_bracket)
    for ratio in (0.001, 0.1, 0.5, 0.9, 1.0):
        k = sel.elected_count(scores.numel(), ratio)
        assert sel.kth_largest(scores, k) == sorted_kth(scores, k), ratio
        assert torch.equal(sel.top_mask(scores, ratio), reference_mask(scores, ratio)), ratio


def test_bracket_is_a_guess_in_range():
    scores = make_scores("heavy_tail", (200_000,), torch.float32, seed=5)
    bits = scores.view(torch.int32).numpy()
    for k in (1, 1000, 100_000, 199_999, 200_000):
        lo, hi = sel._bracket(bits, k)
        assert lo >= 1 and hi >= lo - 1
        t = sel._partition_kth(bits, k)
        if t >= 1:  # an honest sample of a smooth tensor encloses the k-th largest
            assert lo <= t <= hi, k


# --------------------------------------------------------------------------- validation


def _poisoned(dtype, value, numel=5000, seed=3):
    """Valid scores (zeros, ``-0.0`` and ties included) with one ``value`` at a
    position inside the last chunk of the chunked pass."""
    scores = make_scores("ties", (numel,), dtype, seed=seed)
    scores[7] = -0.0
    if value is not None:
        scores[numel - 5] = value
    return scores


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bad", [float("nan"), -float("nan"), float("inf"), -float("inf"), -1e-3])
def test_validate_refuses_values_outside_the_domain_on_every_path(path, dtype, bad):
    scores = _poisoned(dtype, bad)
    for ratio in (0.0, 0.1, 0.5, 1.0):
        with pytest.raises(ScoreDomainError):
            sel.top_mask(scores, ratio, validate=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_validate_accepts_negative_zero_and_the_largest_finite_score(path, dtype):
    scores = _poisoned(dtype, torch.finfo(dtype).max)
    for ratio in (0.0, 0.1, 0.5, 1.0):
        mask = sel.top_mask(scores, ratio, validate=True)
        assert torch.equal(mask, reference_mask(scores, ratio)), ratio
        assert torch.equal(mask, sel.top_mask(scores, ratio)), ratio


def test_validate_reports_the_lowest_negative_score():
    with pytest.raises(ScoreDomainError) as caught:
        sel.check_score_domain(torch.tensor([0.5, -2.0, 0.0]))
    assert caught.value.lowest == -2.0
    with pytest.raises(ScoreDomainError) as caught:
        sel.check_score_domain(torch.tensor([0.5, float("nan")]))
    assert caught.value.lowest is None


# --------------------------------------------------------------------------- CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_matches_cpu(dtype, kind):
    for index, shape in enumerate((*SHAPES, (300_001,))):
        scores = make_scores(kind, shape, dtype, seed=200 + index)
        on_gpu = scores.cuda()
        for ratio in RATIOS:
            got = sel.top_mask(on_gpu, ratio)
            assert got.device.type == "cuda"
            assert torch.equal(got.cpu(), reference_mask(scores, ratio)), (shape, ratio)
            k = sel.elected_count(scores.numel(), ratio)
            if k:
                assert sel.kth_largest(on_gpu, k) == sorted_kth(scores, k)
