"""posterior_sample: the target distribution against transformers, losslessness (chi-square), the reference against
the contract, lowering against reference, registration, compile, validation, and no access outside the arguments."""

from __future__ import annotations

import contextlib
import functools
from unittest import mock

import pytest
import torch
from hypothesis import assume, example, given
from hypothesis import strategies as st
from torch._subclasses.fake_tensor import FakeTensorMode

from benchmarks.ops.posterior_greedy import PosteriorSizes
from benchmarks.ops.posterior_sample import cases
from eagle_ops._checks import FLOAT_DTYPES
from eagle_ops.lowering import posterior_sample as lowering
from eagle_ops.lowering.posterior_sample import posterior_sample_triton
from eagle_ops.posterior_sample import posterior_sample
from eagle_ops.reference.posterior_greedy import target_choice
from eagle_ops.reference.posterior_sample import posterior_sample_reference, target_probs
from tests.ops.test_posterior_greedy import (
    CHAIN,
    GUARD,
    INF,
    MALFORMED,
    NAN,
    OUTPUT_NAMES,
    assert_outputs,
    choosing,
    guarded,
    index,
    lowering_path,
    random_parents,
)
from tests.support import (
    DEVICE,
    assert_close_rel,
    assert_compiles_for_sm90,
    assert_exact,
    assert_no_host_sync,
    poisoned_like,
    traced_aten_graph,
)

Sample = tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def sample_step(
    tokens: torch.Tensor,
    parents: torch.Tensor,
    logits: torch.Tensor,
    max_depth: int,
    *,
    temperature: float | list[float] = 1.0,
    top_k: int | list[int] = 0,
    top_p: float | list[float] = 1.0,
    uniforms: list[list[float]] | None = None,
) -> Sample:
    """A step with per-sequence settings given once for all sequences or as lists; coins drawn if not given."""
    batch = tokens.shape[0]
    per_sequence = lambda value, dtype: torch.tensor(value, dtype=dtype, device=DEVICE).expand(batch).contiguous()
    if uniforms is None:
        coins = torch.rand(batch, max_depth + 3, generator=torch.Generator().manual_seed(batch)).to(DEVICE)
    else:
        coins = torch.tensor(uniforms, dtype=torch.float32, device=DEVICE)
    return (
        tokens,
        parents,
        logits,
        max_depth,
        per_sequence(temperature, torch.float32),
        per_sequence(top_k, torch.int64),
        per_sequence(top_p, torch.float32),
        coins,
    )


def random_sample_step(
    batch: int, size: int, vocab: int, max_depth: int, dtype: torch.dtype, malformed: bool, seed: int
) -> Sample:
    """Logits in steps of 0.5 (ties) with about 3% NaN or ±inf; drafts mostly the target's choice at their parent;
    each sequence with its own temperature, top-k (often off) and top-p (often off, sometimes 0)."""
    generator = torch.Generator().manual_seed(seed)
    uniform = lambda *shape: torch.rand(shape, generator=generator)
    parent = random_parents(batch, size, malformed, generator)
    logits = (torch.randn(batch, size, vocab, generator=generator) * 4).round() / 2
    special = torch.tensor([NAN, INF, -INF])[torch.randint(3, logits.shape, generator=generator)]
    logits = torch.where(uniform(*logits.shape) < 0.03, special, logits).to(dtype)
    agreeing = target_choice(logits).gather(1, parent.clamp(0, size - 1))
    tokens = torch.where(
        uniform(batch, size) < 0.6, agreeing, torch.randint(-1, vocab + 1, (batch, size), generator=generator)
    )
    top_k = torch.where(uniform(batch) < 0.4, 0, torch.randint(-1, vocab + 2, (batch,), generator=generator))
    choice = uniform(batch)
    top_p = torch.where(choice < 0.4, 1.0, torch.where(choice < 0.5, 0.0, uniform(batch)))
    return tuple(
        t.to(DEVICE) if isinstance(t, torch.Tensor) else t
        for t in (
            tokens,
            parent,
            logits,
            max_depth,
            (uniform(batch) * 3.5 - 2).exp(),  # temperature in [0.14, 4.5]
            top_k,
            top_p,
            uniform(batch, max_depth + 3),
        )
    )


@st.composite
def sample_steps(draw: st.DrawFn) -> Sample:
    return random_sample_step(
        batch=draw(st.integers(1, 3)),
        size=draw(st.integers(1, 8)),
        vocab=draw(st.integers(1, 24)),
        max_depth=draw(st.integers(0, 4)),
        dtype=draw(st.sampled_from(FLOAT_DTYPES)),
        malformed=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


# The lowering sums the probabilities in another order than torch (blocks, scans) and its exp differs by an ulp
# or so: probabilities and cumulative sums agree to ~1e-7 at these sizes, so a coin or a top_p closer than that to
# a boundary may fall on either side. Examples whose outputs change when every coin, or every top_p in (0, 1),
# moves by NUDGE (100x that error) are not compared.
NUDGE = 1e-5


def decisive(step: Sample) -> bool:
    """Whether the reference's outputs stay the same when the coins, or the top_p in (0, 1), move by NUDGE."""
    tokens, parent, logits, max_depth, temperature, top_k, top_p, uniforms = step
    searched = (top_p > 0) & (top_p < 1)
    base = posterior_sample_reference(*step)
    for coin_shift, top_p_shift in ((NUDGE, 0.0), (-NUDGE, 0.0), (0.0, NUDGE), (0.0, -NUDGE)):
        moved = posterior_sample_reference(
            tokens, parent, logits, max_depth, temperature, top_k, top_p + searched * top_p_shift, uniforms + coin_shift
        )
        if not all(torch.equal(a, b) for a, b in zip(base, moved, strict=True)):
            return False
    return True


_PINNED_GENERATOR = torch.Generator().manual_seed(0)


def pinned_randn(*shape: int) -> torch.Tensor:
    """Normal values that are the same in every run: the pinned steps must stay off decision boundaries."""
    return torch.randn(shape, generator=_PINNED_GENERATOR).to(DEVICE)


PEAKED_CHAIN = (CHAIN[0], CHAIN[1], CHAIN[2] * 6)  # each draft has probability ~0.95 at its parent
# Root drafts 4, 1, 2, 3 and 1 again, all rejected by a coin of 0.999: the bonus can only be token 0.
STAR = (index([[0, 4, 1, 2, 3, 1]]), index([[-1, 0, 0, 0, 0, 0]]), torch.zeros(1, 6, 5, device=DEVICE))
# Ties at the top-k boundary (three 1.0 for top_k = 2), a uniform row that top_p = 0.7 cuts inside its tie group,
# a -inf row (uniform), a NaN row (uniform), +inf scores (uniform over them), -inf among numbers.
SPECIAL_ROWS = torch.tensor(
    [
        [
            [1.0, 0.0, 1.0, 1.0, -1.0],
            [0.5, 0.5, 0.5, 0.5, 0.5],
            [-INF, -INF, -INF, -INF, -INF],
            [NAN, NAN, NAN, NAN, NAN],
            [INF, 0.0, INF, NAN, 3.0],
            [-INF, 2.0, -INF, 1.0, 2.0],
        ]
    ],
    device=DEVICE,
)
SPECIAL_TREE = (index([[0, 2, 3, 1, 0, 4]]), index([[-1, 0, 1, 2, 3, 4]]), SPECIAL_ROWS)
PINNED: list[Sample] = [
    sample_step(index([[7]]), index([[-1]]), pinned_randn(1, 1, 5), 3),  # T = 1: the root alone
    sample_step(*PEAKED_CHAIN, 1, uniforms=[[0.3, 0.3, 0.3, 0.5]]),  # out of depth: the bonus keeps all tokens
    sample_step(*PEAKED_CHAIN, 7, uniforms=[[0.3] * 9 + [0.5]]),  # the whole chain, then the bonus at its end
    sample_step(*PEAKED_CHAIN, 7, uniforms=[[0.3, 0.3, 0.97, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.7]]),  # a rejection
    sample_step(*STAR, 2, uniforms=[[0.999, 0.5, 0.5, 0.6, 0.5]]),  # star: all rejected, the bonus is token 0
    sample_step(*STAR, 2, uniforms=[[0.5, 0.5, 0.5, 0.6, 0.5]]),  # star: one accepted
    sample_step(*SPECIAL_TREE, 5, top_k=2, top_p=0.7, uniforms=[[0.2, 0.4, 0.1, 0.5, 0.1, 0.2, 0.3, 0.3]]),
    sample_step(*SPECIAL_TREE, 5, top_k=9, top_p=0.0, uniforms=[[0.2, 0.4, 0.1, 0.5, 0.1, 0.2, 0.3, 0.3]]),
    sample_step(*MALFORMED, 5, temperature=0.5),
    sample_step(  # a root alone whose tie group spans blocks: top-p keeps it whole, or drops its first 5 tokens
        index([[0], [0]]),
        index([[-1], [-1]]),
        torch.zeros(2, 1, 12, device=DEVICE),
        0,
        top_p=[0.95, 0.55],
        uniforms=[[0.5, 0.5, 0.1], [0.5, 0.5, 0.1]],
    ),
    sample_step(  # B > 1: temperatures small and large, top-k and top-p off and on, per sequence
        index([[0, 1, 2, 7], [0, 5, 6, 7], [0, 3, 2, 2]]),
        index([[-1, 0, 1, 0], [-1, 0, 0, 1], [-1, 0, 0, 2]]),
        choosing([[1, 2, 0, 0], [4, 4, 4, 4], [2, 2, 0, 2]], 8) + pinned_randn(3, 4, 8),
        3,
        temperature=[0.05, 1.0, 20.0],
        top_k=[0, 3, 0],
        top_p=[1.0, 0.8, 0.5],
    ),
]


def pinned(test):
    """The awkward steps every property test also runs."""
    for step in PINNED:
        test = example(step=step)(test)
    return test


def test_pinned_steps_are_decisive():
    """A pinned step that is not decisive would be skipped without a word."""
    for number, step in enumerate(PINNED):
        assert decisive(step), f"pinned step {number} sits on a decision boundary"


def test_target_distribution_is_transformers_sampling_distribution():
    """Temperature, TopKLogitsWarper, TopPLogitsWarper as `generate(do_sample=True)` chains them, then softmax."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    generator = torch.Generator().manual_seed(0)
    for row in range(60):
        logits = torch.randn(1, 1, 30, generator=generator) * 3
        if row % 3 == 0:
            logits = logits.round()  # ties, at the top-k and top-p boundaries too
        temperature = float(torch.empty(()).uniform_(0.2, 2.0, generator=generator))
        top_k = [0, 1, 5, 29, 31][row % 5]
        top_p = 1.0 if row % 4 == 0 else float(torch.empty(()).uniform_(0.05, 0.99, generator=generator))
        settings = (torch.tensor([temperature]), torch.tensor([top_k]), torch.tensor([top_p]))
        ours = target_probs(logits, *settings)[0, 0]
        scores = TemperatureLogitsWarper(temperature)(None, logits[0])
        scores = TopKLogitsWarper(top_k)(None, scores) if top_k else scores
        # transformers' sort is not stable: which tokens of a tie group top-p drops is up to the sort kernel.
        # Ours drops them in index order, as a stable sort does.
        with mock.patch.object(torch, "sort", functools.partial(torch.sort, stable=True)):
            scores = TopPLogitsWarper(top_p)(None, scores) if top_p < 1 else scores
        theirs = scores.softmax(-1)[0]
        assert_exact(f"row {row} kept tokens", ours > 0, theirs > 0)
        # Both are fp32 softmaxes of the same scores, computed by different kernels: a few ulps apart.
        assert_close_rel(f"row {row} probabilities", ours, theirs, 1e-6)


def test_target_distribution_of_special_rows():
    """NaN ranks as -inf; a row of -inf (or NaN) is uniform; +inf scores share the row; top-k keeps boundary ties;
    top-p drops the first tokens of a tie group in index order; top_p <= 0 keeps the last token of the sort."""
    settings = lambda k, p: (torch.tensor([1.0]), torch.tensor([k]), torch.tensor([p]))
    probs = target_probs(SPECIAL_ROWS.cpu(), *settings(0, 1.0))[0]
    assert_exact("-inf row", probs[2], torch.full((5,), 0.2))
    assert_exact("NaN row", probs[3], torch.full((5,), 0.2))
    assert_exact("+inf row", probs[4], torch.tensor([0.5, 0.0, 0.5, 0.0, 0.0]))
    top_k = target_probs(SPECIAL_ROWS.cpu(), *settings(2, 1.0))[0]
    assert_exact("top-k ties", top_k[0] > 0, torch.tensor([True, False, True, True, False]))
    top_p = target_probs(SPECIAL_ROWS.cpu(), *settings(0, 0.7))[0]
    assert_exact("top-p ties", top_p[1], torch.tensor([0.0, 0.25, 0.25, 0.25, 0.25]))
    last = target_probs(SPECIAL_ROWS.cpu(), *settings(0, 0.0))[0]
    assert_exact("top_p = 0", last[5], torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0]))


def sequential_contract(step: Sample) -> tuple[torch.Tensor, ...]:
    """The contract in plain Python, in float64, on the reference's target distributions."""
    tokens, parents, logits, max_depth, temperature, top_k, top_p, uniforms = step
    path_len, size, vocab = max_depth + 2, tokens.shape[1], logits.shape[2]
    probs = target_probs(logits, temperature, top_k, top_p).double().tolist()
    outputs = {name: [] for name in OUTPUT_NAMES}
    for b, (row_tokens, row_parents, coins) in enumerate(
        zip(tokens.tolist(), parents.tolist(), uniforms.tolist(), strict=True)
    ):
        path, rejected = [0], set()
        for depth in range(min(max_depth + 1, size - 1)):
            offered, cumulative, accepted = set(), 0.0, None
            for child in (j for j in range(path[-1] + 1, size) if row_parents[j] == path[-1]):
                token = row_tokens[child]
                if 0 <= token < vocab and token not in offered:
                    cumulative += probs[b][path[-1]][token]
                offered.add(token)
                if cumulative > coins[depth]:
                    accepted = child
                    break
            if accepted is None:
                rejected = offered
                break
            path.append(accepted)
        row = probs[b][path[-1]]
        residual = [0.0 if token in rejected else p for token, p in enumerate(row)]
        residual = residual if sum(residual) > 0 else row
        target, cumulative, bonus = coins[path_len] * sum(residual), 0.0, None
        for token, p in enumerate(residual):
            cumulative += p
            if bonus is None and cumulative > target:
                bonus = token
        bonus = max(token for token, p in enumerate(residual) if p > 0) if bonus is None else bonus
        drafted = [row_tokens[node] for node in path[1:]] + [bonus]
        outputs["accept_len"].append(len(path) - 1)
        outputs["accept_path"].append(path + [-1] * (path_len - len(path)))
        outputs["emitted"].append(drafted + [-1] * (path_len - len(drafted)))
        outputs["bonus"].append(bonus)
    return tuple(torch.tensor(outputs[name], dtype=torch.int64) for name in OUTPUT_NAMES)


@given(step=sample_steps())
@pinned
def test_reference_follows_the_contract(step):
    step = tuple(t.cpu() if isinstance(t, torch.Tensor) else t for t in step)
    assume(decisive(step))
    assert_outputs("reference", posterior_sample_reference(*step), sequential_contract(step))


# Blocks of 4 tokens: several blocks per row, so every running count, carry and "does a child fall in this block"
# test works across blocks, which the default sizes only do with vocabularies of hundreds. Room for 4 top-k
# survivors: rows with more take the streamed path, which the default room only does with vocabularies above 1024,
# and their top-p search splits each row into chunks of blocks (4 chunks in vocabularies of 13 to 24 tokens).
SMALL_BLOCKS = {"default blocks": {}, "tiny blocks": {"_MAX_BLOCK_V": 4, "_MAX_CANDIDATES": 4}}


@pytest.mark.parametrize("blocks", SMALL_BLOCKS.values(), ids=SMALL_BLOCKS.keys())
@given(step=sample_steps())
@pinned
def test_lowering_matches_reference(blocks, step):
    assume(decisive(step))
    want = posterior_sample_reference(*step)
    with contextlib.ExitStack() as stack:
        for name, value in blocks.items():
            stack.enter_context(mock.patch.object(lowering, name, value))
        got = posterior_sample_triton(*step, out=tuple(poisoned_like(t) for t in want))
    assert_outputs("lowering", got, want)


def chi_square_p_value(observed: torch.Tensor, expected_probs: torch.Tensor) -> float:
    """Pearson's chi-square test of counts against probabilities; cells of probability 0 must stay empty."""
    possible = expected_probs > 0
    assert observed[~possible].sum() == 0, f"{int(observed[~possible].sum())} draws of probability-0 outcomes"
    expected = expected_probs[possible] * observed.sum()
    statistic = ((observed[possible] - expected) ** 2 / expected).sum()
    degrees = int(possible.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(degrees / 2, dtype=torch.float64), statistic / 2))


# Root drafts 2 (node 1), 0 (node 2), 2 again (node 3: no mass, its subtree is never reached) and 4 (node 4);
# nodes 1, 2 and 5 have drafts of their own. Every first token that can be a draft is a depth-1 node, so the
# target's law of the second token after it is the distribution at that node: the joint law is computable.
STAT_TOKENS = [0, 2, 0, 2, 4, 1, 5, 2, 3, 0]
STAT_PARENT = [-1, 0, 0, 0, 0, 1, 1, 2, 5, 3]
STAT_NODE_OF_FIRST = {2: 1, 0: 2, 4: 4}
STAT_DRAWS = 20_000


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), [(1.0, 0, 1.0), (1.3, 5, 0.95)], ids=["plain", "warped"])
def test_emitted_tokens_follow_the_target_distribution(temperature, top_k, top_p):
    """Lossless: the first emitted token, and the first two jointly, are distributed as sampling the target token
    by token (the second from the distribution at the first's node; "end" when the first was the bonus)."""
    generator = torch.Generator().manual_seed(2024)
    vocab, max_depth = 6, 2
    logits = torch.randn(1, len(STAT_TOKENS), vocab, generator=generator) * 1.5
    settings = (torch.tensor([temperature]), torch.tensor([top_k]), torch.tensor([top_p]))
    probs = target_probs(logits, *settings)[0].double()
    repeat = lambda t: t.expand(STAT_DRAWS, *t.shape[1:]).contiguous()
    step = (
        repeat(torch.tensor([STAT_TOKENS])),
        repeat(torch.tensor([STAT_PARENT])),
        repeat(logits),
        max_depth,
        *(repeat(s) for s in settings),
        torch.rand(STAT_DRAWS, max_depth + 3, generator=generator),
    )
    _, _, emitted, _ = posterior_sample_reference(*step)

    first = torch.bincount(emitted[:, 0], minlength=vocab).double()
    assert chi_square_p_value(first, probs[0]) > 1e-3

    # Outcome (x, y) at x * (vocab + 1) + y, with y = vocab for "end".
    joint_law = torch.zeros(vocab, vocab + 1, dtype=torch.float64)
    for token in range(vocab):
        if token in STAT_NODE_OF_FIRST:
            joint_law[token, :vocab] = probs[0, token] * probs[STAT_NODE_OF_FIRST[token]]
        else:
            joint_law[token, vocab] = probs[0, token]
    second = torch.where(emitted[:, 1] >= 0, emitted[:, 1], vocab)
    joint = torch.bincount(emitted[:, 0] * (vocab + 1) + second, minlength=vocab * (vocab + 1)).double()
    assert chi_square_p_value(joint, joint_law.flatten()) > 1e-3


def small_sample(device: torch.device | str = DEVICE) -> Sample:
    step = random_sample_step(2, 6, 7, 3, torch.float32, malformed=False, seed=3)
    return tuple(t.to(device) if isinstance(t, torch.Tensor) else t for t in step)


def test_registered_op_runs_reference_and_lowering():
    step = small_sample("cpu")
    assert decisive(step)
    want = posterior_sample_reference(*step)
    assert_outputs("reference path", posterior_sample(*step), want)
    with lowering_path():
        assert_outputs("lowering path", posterior_sample(*small_sample()), want)


def test_opcheck_reference_path():
    torch.library.opcheck(torch.ops.eagle_ops.posterior_sample.default, small_sample("cpu"))


def test_opcheck_lowering_path():
    with lowering_path():
        torch.library.opcheck(torch.ops.eagle_ops.posterior_sample.default, small_sample())


def test_fake_outputs_match_real_shapes_dtypes_strides():
    step = small_sample()
    real = posterior_sample(*step)
    with FakeTensorMode() as mode:
        fake = posterior_sample(*(mode.from_tensor(t) if isinstance(t, torch.Tensor) else t for t in step))
    for name, f, r in zip(OUTPUT_NAMES, fake, real, strict=True):
        assert (f.shape, f.dtype, f.stride()) == (r.shape, r.dtype, r.stride()), name


def test_compiles_whole_without_host_sync():
    tokens, parent, logits, max_depth, *settings = small_sample()
    step = lambda *args: posterior_sample(*args[:3], max_depth, *args[3:])
    assert_no_host_sync(traced_aten_graph(step, tokens, parent, logits, *settings))
    reference = lambda *args: posterior_sample_reference(*args[:3], max_depth, *args[3:])
    assert_no_host_sync(traced_aten_graph(reference, *(t.cpu() for t in (tokens, parent, logits, *settings))))
    compiled = torch.compile(step, fullgraph=True)(tokens, parent, logits, *settings)
    assert_outputs("compiled", compiled, step(tokens, parent, logits, *settings))


GOOD = sample_step(index([[0, 1, 2, 3]]), index([[-1, 0, 0, 1]]), torch.zeros(1, 4, 6, device=DEVICE), 2)


def replaced(position: int, value: object) -> Sample:
    return tuple(value if i == position else arg for i, arg in enumerate(GOOD))


@pytest.mark.parametrize(
    ("args", "error", "named"),
    [
        (replaced(0, GOOD[0][0]), ValueError, "tree_tokens"),  # rank
        (replaced(1, GOOD[1][:, :3]), ValueError, "tree_parent"),  # shape relation
        (replaced(2, GOOD[2].half()[:, :, None]), ValueError, "target_logits"),
        (replaced(2, GOOD[2].double()), TypeError, "target_logits"),  # dtype
        (replaced(3, -1), ValueError, "max_depth"),
        (replaced(4, GOOD[4].expand(2)), ValueError, "temperature"),
        (replaced(4, GOOD[4].double()), TypeError, "temperature"),
        (replaced(5, GOOD[5].int()), TypeError, "top_k"),
        (replaced(5, GOOD[5][None]), ValueError, "top_k"),
        (replaced(6, GOOD[6].half()), TypeError, "top_p"),
        (replaced(6, GOOD[6].to("meta")), ValueError, "top_p"),  # device
        (replaced(7, GOOD[7][:, :4]), ValueError, "uniforms"),  # P + 1 = max_depth + 3 columns
        (replaced(7, torch.rand(1, 10, device=DEVICE)[:, ::2]), ValueError, "uniforms"),  # layout
    ],
)
def test_rejects_bad_arguments(args, error, named):
    with pytest.raises(error, match=named):
        posterior_sample(*args)


@pytest.mark.parametrize(
    ("position", "replacement", "named"),
    [
        (0, torch.empty(2, dtype=torch.int64, device=DEVICE), "accept_len"),  # shape relation
        (1, torch.empty(1, 5, dtype=torch.int64, device=DEVICE), "accept_path"),  # P = max_depth + 2
        (2, torch.empty(1, 4, dtype=torch.int64, device="meta"), "emitted"),  # device
        (3, torch.empty(1, dtype=torch.int32, device=DEVICE), "bonus"),  # dtype
    ],
)
def test_lowering_rejects_bad_out(position, replacement, named):
    out = list(posterior_sample_reference(*GOOD))
    out[position] = replacement
    with pytest.raises((ValueError, TypeError), match=named):
        posterior_sample_triton(*GOOD, out=tuple(out))


def assert_lowering_touches_only_its_arguments(
    tokens: torch.Tensor, parent: torch.Tensor, logits: torch.Tensor, max_depth: int, settings: list[torch.Tensor]
) -> None:
    assert decisive((tokens, parent, logits, max_depth, *settings))
    want = posterior_sample_reference(tokens, parent, logits, max_depth, *settings)
    inputs = [guarded(tokens, 0)[1], guarded(parent, 0)[1], guarded(logits, INF)[1]]
    fills = (1e-3, 2**40, 0.5, 0.0)
    guarded_settings = [guarded(setting, fill)[1] for setting, fill in zip(settings, fills, strict=True)]
    outputs = [guarded(poisoned_like(t), 12345) for t in want]
    got = posterior_sample_triton(*inputs, max_depth, *guarded_settings, out=tuple(view for _, view in outputs))
    assert_outputs("guarded", got, want)
    for name, (buffer, _) in zip(OUTPUT_NAMES, outputs, strict=True):
        assert (torch.cat([buffer[:GUARD], buffer[-GUARD:]]) == 12345).all(), f"wrote outside {name}"


# Under the interpreter, numpy reports the deliberate divisions by a zero or infinite temperature.
@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_touches_only_its_arguments_whatever_the_inputs():
    """Malformed parents, out-of-vocabulary tokens, NaN and ±inf logits, coins outside [0, 1), temperatures the
    caller should have refused: the inputs sit between +inf logits, zero tokens and parents and settings that
    would change the results if read; the outputs between sentinels that must stay."""
    for temperature in ([-1.0, 0.0, NAN], [INF, -INF, 1e-30]):
        tokens, parent, logits, max_depth, *settings = random_sample_step(
            3, 9, 5, 100, torch.float32, malformed=True, seed=7
        )
        tokens[0] = index([[2**62, -(2**62), 5, -1, 0, 1, 2, 3, 4]])
        settings[0] = torch.tensor(temperature, device=DEVICE)
        settings[3][0, :4] = torch.tensor([-0.5, 1.0, 7.0, NAN])
        settings[3][1:, -1] = torch.tensor([1.0, NAN])
        assert_lowering_touches_only_its_arguments(tokens, parent, logits, max_depth, settings)


def test_kernels_compile_for_sm90():
    # T = 1; top-k and top-p off, on, and top_p = 0; several blocks per row with a child in some; bf16 and fp16.
    tokens, parent = small_sample()[:2]
    launches = [
        sample_step(index([[3]]), index([[-1]]), torch.randn(1, 1, 5, device=DEVICE), 0),
        small_sample(),
        sample_step(
            tokens, parent, torch.randn(2, 6, 700, device=DEVICE, dtype=torch.bfloat16), 7, top_k=50, top_p=0.9
        ),
        sample_step(*PEAKED_CHAIN[:2], PEAKED_CHAIN[2].half(), 2, top_k=3, top_p=[0.0]),
    ]
    assert_compiles_for_sm90(lambda: [posterior_sample_triton(*step) for step in launches])


def test_benchmark_cases_run_on_tiny_shapes():
    sizes = PosteriorSizes(batches=(1, 2), tree_size=7, branching=2, depth=1, vocab=60)
    for case in cases(DEVICE, sizes=sizes):
        case.check()
        for run in case.candidates.values():
            run()
        assert case.bytes_min > 0
