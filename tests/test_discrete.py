"""Chapter 14's package: probabilities over tiny alphabets by brute force, the diffusion ELBOs
against exact log-likelihoods, the KV cache against the uncached model, in-flight batching
against one-request decoding, RVQ against brute force, MaM's self-consistency with exact
marginals, and bad inputs."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from minigen.discrete import autoregressive as ar
from minigen.discrete import marginalization as mam
from minigen.discrete import masked as md
from minigen.discrete import resgen, rvq
from minigen.discrete import uniform as un
from minigen.discrete.batching import serve_inflight, serve_static
from minigen.nets.token_transformer import TokenTransformer

K, L = 3, 3  # 3 symbols x 3 tokens: 27 sequences
ALL = torch.tensor(list(itertools.product(range(K), repeat=L)))


def _model(seed: int = 0, **kw) -> TokenTransformer:
    torch.manual_seed(seed)
    m = TokenTransformer(dim=16, depth=2, heads=2, **kw).eval()
    with torch.no_grad():  # spread the logits beyond GPT-2's small initialisation
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m


# -- autoregressive -------------------------------------------------------------------------

def test_autoregressive_probabilities_sum_to_one():
    m = _model(vocab=K + 1, length=L, causal=True)
    with torch.no_grad():
        p = torch.exp(-ar.sequence_nll(m, ALL).double())
    assert p.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert p.min() > 0 and p.std() > 1e-3  # a non-trivial distribution


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-6), (torch.float32, 1e-5)])
def test_kv_cache_logits_equal_uncached(dtype, tol):
    m = _model(vocab=6, length=12, causal=True).to(dtype)
    x = torch.randint(5, (4, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = m(x)
        cache = m.new_cache(4)
        stepped = torch.cat([m(x[:, i:i + 1], cache=cache) for i in range(12)], 1)
        cache2 = m.new_cache(4)  # a prefix of 5 at once, then one at a time
        prefill = m(x[:, :5], cache=cache2)
        rest = [m(x[:, i:i + 1], cache=cache2) for i in range(5, 12)]
        mixed = torch.cat([prefill] + rest, 1)
    assert (stepped - full).abs().max() < tol
    assert (mixed - full).abs().max() < tol
    assert cache.lengths.tolist() == [12] * 4


def test_cached_and_uncached_sampling_agree():
    m = _model(vocab=6, length=10, causal=True)
    a = ar.sample_autoregressive(m, 8, torch.Generator().manual_seed(3), use_cache=True)
    b = ar.sample_autoregressive(m, 8, torch.Generator().manual_seed(3), use_cache=False)
    assert torch.equal(a.x, b.x) and a.nfe == 10
    assert a.x.min() >= 0 and a.x.max() < 5


def _greedy(m, n):
    x = torch.full((1, 1), m.vocab - 1)
    with torch.no_grad():
        for _ in range(n):
            x = torch.cat([x, m(x)[:, -1, : m.vocab - 1].argmax(-1, keepdim=True)], 1)
    return x[0, 1:]


def test_inflight_batching_matches_one_request_decoding():
    m = _model(vocab=6, length=16, causal=True)
    lengths = [3, 16, 5, 1, 9, 2, 7]
    static, inflight = serve_static(m, lengths, 3), serve_inflight(m, lengths, 3)
    for r, n in enumerate(lengths):
        ref = _greedy(m, n)
        assert torch.equal(static.outputs[r], ref) and torch.equal(inflight.outputs[r], ref)
    assert static.slot_steps_used == inflight.slot_steps_used == sum(lengths)
    # static batches pay max(lengths) per batch: 16 + 9 + 7 = 32 steps; in-flight needs fewer
    assert static.steps == 16 + 9 + 7
    assert sum(lengths) / 3 <= inflight.steps < static.steps


# -- masked diffusion -----------------------------------------------------------------------

def test_masked_any_order_likelihood_sums_to_one_and_bounds_the_elbo():
    m = _model(vocab=K + 1, length=L, out_vocab=K)
    with torch.no_grad():
        logp = md.any_order_log_likelihood(m, ALL, K)
        nelbo = md.exact_masked_nelbo(m, ALL, K)
    assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-6)
    assert (nelbo >= -logp - 1e-9).all()          # ELBO <= log-likelihood, for every sequence
    assert (nelbo + logp).max() > 1e-3            # and the bound is not tight for a random model


def test_masked_monte_carlo_elbo_matches_enumeration():
    m = _model(vocab=K + 1, length=L, out_vocab=K)
    x = ALL[[0, 5, 13, 26]]
    with torch.no_grad():
        exact = md.exact_masked_nelbo(m, x, K)
        mc = md.masked_nelbo(m, x.repeat(1000, 1), K, 12, torch.Generator().manual_seed(0))
    assert torch.allclose(mc.view(1000, 4).mean(0), exact, atol=0.02)
    # the training loss is the same estimator, per token
    loss = md.MaskedDiffusion(K).loss(m, x.repeat(2000, 1), torch.Generator().manual_seed(1)).loss
    assert loss.item() * L == pytest.approx(exact.mean().item(), abs=0.05)


def test_masked_one_step_bound_is_the_independent_model():
    m = _model(vocab=K + 1, length=L, out_vocab=K)
    with torch.no_grad():
        logits = m(torch.full((1, L), K))[0, :, :K]
        indep = -torch.log_softmax(logits.double(), -1).gather(1, ALL.T).sum(0)
        one = md.masked_nelbo_steps(m, ALL, K, 1, torch.Generator().manual_seed(0))
    assert torch.allclose(one, indep, atol=1e-5)


def test_masked_sampling_reveals_everything_in_the_given_steps():
    m = _model(vocab=K + 1, length=L, out_vocab=K)
    s = md.sample_masked(m, 50, L, K, 2, torch.Generator().manual_seed(0))
    assert s.nfe == 2 and s.x.max() < K and s.x.min() >= 0


# -- uniform (D3PM) -------------------------------------------------------------------------

def test_uniform_posterior_is_bayes_rule():
    x, xs = torch.tensor([[0, 2]]), torch.tensor([[1, 2]])
    s, t = torch.tensor([0.3]), torch.tensor([0.7])
    q = un.posterior_probs(x, xs, s.double(), t.double(), K)[0]
    for i in range(2):
        qt_given_x = [t.item() * (y == x[0, i]) + (1 - t.item()) / K for y in range(K)]
        r = s.item() / t.item()
        qs_given_y = [r * (xs[0, i] == y) + (1 - r) / K for y in range(K)]
        bayes = torch.tensor([a * b for a, b in zip(qt_given_x, qs_given_y)], dtype=torch.float64)
        assert torch.allclose(q[i], bayes / bayes.sum())


def test_uniform_reverse_step_with_the_true_x0_is_the_posterior():
    x, xs = torch.tensor([[0, 2, 1]]), torch.tensor([[1, 2, 0]])
    s, t = torch.tensor([0.25], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64)
    p = un.reverse_step_probs(torch.nn.functional.one_hot(x, K).double(), xs, s, t)
    assert torch.allclose(p, un.posterior_probs(x, xs, s, t, K))
    assert torch.allclose(p.sum(-1), torch.ones(1, 3, dtype=torch.float64))


def _uniform_exact(m, x_all, steps):
    """log p(x) of the T-step reverse chain (forward algorithm over the K^L states) and the
    T-step NELBO with every expectation over x_s enumerated."""
    n = len(x_all)
    grid = torch.arange(steps + 1, dtype=torch.float64) / steps
    def trans(k):  # (n states from) x (n states to): p(x_{k+1} | x_k)
        s, t = grid[k].expand(n), grid[k + 1].expand(n)
        probs = un.reverse_step_probs(torch.softmax(m(x_all, s.float()).double(), -1), x_all, s, t)
        return probs[:, torch.arange(L), x_all].prod(-1)  # (from, to): prod_i p(to_i | from)
    def q_marg(x, a):  # q(x_a = state | x) for every state: (n,)
        return (a * (x_all == x) + (1 - a) / K).prod(-1)
    with torch.no_grad():
        mats = [trans(k) for k in range(steps)]
        dist = torch.full((n,), 1.0 / n, dtype=torch.float64)
        for mat in mats:
            dist = dist @ mat
        nelbo = torch.zeros(n, dtype=torch.float64)
        for j, x in enumerate(x_all):
            for k in range(steps):
                w = q_marg(x, grid[k])
                s, t = grid[k].expand(n), grid[k + 1].expand(n)
                probs = un.reverse_step_probs(torch.softmax(m(x_all, s.float()).double(), -1), x_all, s, t)
                post = un.posterior_probs(x.expand(n, -1), x_all, s, t, K)
                kl = (torch.special.xlogy(post, post) - torch.special.xlogy(post, probs)).sum((1, 2))
                nelbo[j] += (w * kl).sum()
    return dist.log(), nelbo


def test_uniform_chain_sums_to_one_and_bounds_its_elbo():
    m = _model(vocab=K, length=L, time_input=True)
    logp, nelbo = _uniform_exact(m, ALL, steps=3)
    assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-9)
    assert (nelbo >= -logp - 1e-9).all()
    assert (nelbo + logp).max() > 1e-3


def test_uniform_single_draw_nelbo_is_unbiased():
    m = _model(vocab=K, length=L, time_input=True)
    _, nelbo = _uniform_exact(m, ALL, steps=3)
    x = ALL[[4, 20]]
    with torch.no_grad():
        mc = un.uniform_nelbo_steps(m, x.repeat(3000, 1), K, 3, torch.Generator().manual_seed(0))
    assert torch.allclose(mc.view(3000, 2).mean(0), nelbo[[4, 20]], atol=0.03)


def test_uniform_hybrid_loss_adds_lambda_times_the_same_calls_cross_entropy():
    """ce_weight = 0 is the NELBO alone; lambda > 0 adds lambda x the cross-entropy of the x0
    logits of the same denoiser call (same noise draw), and per_sample stays the NELBO."""
    m = _model(vocab=K, length=L, time_input=True).eval()
    x = ALL[[1, 7, 20, 25]]
    plain = un.UniformDiffusion(K, 4)(m, x, torch.Generator().manual_seed(3), per_sample=True)
    hybrid = un.UniformDiffusion(K, 4, ce_weight=0.5)(m, x, torch.Generator().manual_seed(3), per_sample=True)
    g = torch.Generator().manual_seed(3)
    k = torch.randint(4, (len(x),), generator=g)
    kl, logits = un.step_terms(m, x, k / 4, (k + 1) / 4, K, g)
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, K), x.reshape(-1))
    assert torch.allclose(plain.per_sample, 4 * kl) and torch.equal(plain.per_sample, hybrid.per_sample)
    assert plain.loss.item() == pytest.approx((4 * kl).mean().item() / L, rel=1e-6)
    assert hybrid.loss.item() == pytest.approx(plain.loss.item() + 0.5 * ce.item(), rel=1e-6)
    assert ce.item() > 0.1  # an untrained denoiser: the added term is not negligible
    with pytest.raises(ValueError, match="ce_weight"):
        un.UniformDiffusion(K, 4, ce_weight=-1.0)


# -- RVQ and collective tokens --------------------------------------------------------------

def test_patches_round_trip_and_bad_sizes():
    x = torch.randn(3, 1, 8, 8)
    z = rvq.to_patches(x, 2)
    assert z.shape == (3, 16, 4) and torch.equal(rvq.from_patches(z, 2, 1, 8), x)
    assert torch.equal(z[0, 1], x[0, 0, :2, 2:4].reshape(-1))
    with pytest.raises(ValueError, match="multiple of the patch"):
        rvq.to_patches(torch.randn(1, 1, 7, 7), 2)


def test_rvq_error_falls_with_depth_and_encoding_is_greedy_argmin():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(400, 5, 4, generator=g) * torch.tensor([2.0, 1.0, 0.5, 0.25])
    q = rvq.ResidualQuantizer(5, 8).fit(z, g)
    codes = q.encode(z)
    errs = [((q.decode(codes[..., :d]) - z) ** 2).mean().item() for d in range(6)]
    assert all(b <= a + 1e-7 for a, b in zip(errs, errs[1:])) and errs[-1] < 0.5 * errs[1]
    r = z.reshape(-1, 4)  # brute force: the nearest code of every stage, by explicit distances
    for d in range(5):
        dist = ((r[:, None] - q.codebooks[d][None]) ** 2).sum(-1)
        assert torch.equal(codes.reshape(-1, 5)[:, d], dist.argmin(1))
        r = r - q.codebooks[d][dist.argmin(1)]


def test_rvq_matches_vector_quantize_pytorch():
    """An independent implementation (lucidrains' ``vector-quantize-pytorch``): with our codebooks
    loaded, its ``ResidualVQ`` picks the same codes and the same reconstruction; fitted its own way
    (k-means init, then EMA updates), its error at every depth is within 20% of our residual
    k-means' (measured 0.96-1.05x over four seeds)."""
    from vector_quantize_pytorch import ResidualVQ
    g = torch.Generator().manual_seed(0)
    z = torch.randn(400, 5, 4, generator=g) * torch.tensor([2.0, 1.0, 0.5, 0.25])
    q = rvq.ResidualQuantizer(4, 8).fit(z, g)
    codes = q.encode(z)
    ref = ResidualVQ(dim=4, num_quantizers=4, codebook_size=8).eval()
    with torch.no_grad():
        for d, layer in enumerate(ref.layers):
            layer._codebook.embed.copy_(q.codebooks[d][None])
            layer._codebook.initted.fill_(True)
        out, idx, _ = ref(z)
    assert torch.equal(idx, codes)
    torch.testing.assert_close(out, q.decode(codes), atol=1e-5, rtol=0)
    torch.manual_seed(0)
    fit = ResidualVQ(dim=4, num_quantizers=4, codebook_size=8, kmeans_init=True, kmeans_iters=25,
                     decay=0.9, threshold_ema_dead_code=0).train()
    for _ in range(100):
        fit(z)
    with torch.no_grad():
        _, theirs, _ = fit.eval()(z)
        books = [layer._codebook.embed[0] for layer in fit.layers]
        for d in range(1, 5):
            ours_mse = ((q.decode(codes[..., :d]) - z) ** 2).mean()
            their_mse = ((sum(books[k][theirs[..., k]] for k in range(d)) - z) ** 2).mean()
            assert ours_mse <= 1.2 * their_mse, (d, ours_mse, their_mse)


def test_rvq_bad_inputs():
    with pytest.raises(ValueError):
        rvq.ResidualQuantizer(0, 8)
    with pytest.raises(RuntimeError, match="fit"):
        rvq.ResidualQuantizer(2, 8).encode(torch.randn(3, 4))
    with pytest.raises(ValueError, match="k <="):
        rvq.kmeans(torch.randn(3, 2), 5, 2, torch.Generator())


def test_collective_vectors_and_quantisation_from_a_depth():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(50, 6, 4, generator=g)
    q = rvq.ResidualQuantizer(3, 8).fit(z, g)
    codes = q.encode(z)
    counts = torch.randint(4, (50, 6), generator=g)
    partial, y = resgen.known_sum(q.embed(codes), counts)
    assert torch.allclose(partial + y, q.decode(codes), atol=1e-6)
    assert torch.allclose(y[counts == 0], torch.zeros(1, 4))
    assert torch.allclose(partial[counts == 3], torch.zeros(1, 4))
    # quantising from depth 0 is the encoder; from depth D - n, of the residual, its deep codes
    assert torch.equal(resgen.quantize_from(q, z, torch.zeros(50, 6, dtype=torch.long)), codes)
    first = 3 - counts
    deep = resgen.quantize_from(q, z - partial, first)
    keep = torch.arange(3) >= first[..., None]
    assert torch.equal(deep[keep], codes[keep])


def test_mixture_nll_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    logits, mu, ls, y = (torch.randn(7, 3, generator=g), torch.randn(7, 3, 2, generator=g),
                         0.3 * torch.randn(7, 3, 2, generator=g), torch.randn(7, 2, generator=g))
    d = torch.distributions
    ref = d.MixtureSameFamily(d.Categorical(logits=logits), d.Independent(d.Normal(mu, ls.exp()), 1))
    assert torch.allclose(resgen.mixture_nll(logits, mu, ls, y), -ref.log_prob(y), atol=1e-5)


def test_collective_sampling_costs_steps_not_depth():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(60, 4, 4, generator=g)
    for depth in (2, 5):
        q = rvq.ResidualQuantizer(depth, 4).fit(z, g)
        model = resgen.CollectiveDenoiser(4, 4, depth, dim=16, depth=1, heads=2, mixtures=3)
        loss = resgen.CollectiveMaskedDiffusion(q).loss(model, q.encode(z), g).loss
        loss.backward()
        assert torch.isfinite(loss)
        s = resgen.sample_collective(model, q, 10, 4, 3, g)
        assert s.nfe == 3 and s.x.shape == (10, 4, depth) and 0 <= s.x.min() and s.x.max() < 4


# -- marginalization models -----------------------------------------------------------------

MIX = mam.BernoulliMixture.random(3, 4, torch.Generator().manual_seed(0))
STATES = mam.all_states(4)


def test_bernoulli_mixture_marginals_are_sums_over_completions():
    x = STATES[[3, 9]]
    observed = torch.tensor([[True, False, True, False], [False, False, False, True]])
    full = torch.ones_like(STATES, dtype=torch.bool)
    p_full = MIX.log_marginal(STATES, full).exp()
    assert p_full.sum().item() == pytest.approx(1.0, abs=1e-12)
    for row in range(2):
        agree = (STATES[:, observed[row]] == x[row, observed[row]]).all(1)
        assert MIX.log_marginal(x[row:row + 1], observed[row:row + 1]).exp().item() == \
            pytest.approx(p_full[agree].sum().item(), rel=1e-10)


class _ExactMarginal(torch.nn.Module):
    """f = the exact log-marginal (plus a constant, which MaM's f(empty) removes)."""

    def __init__(self, shift: float = 0.0):
        super().__init__()
        self.shift = shift
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, tokens):
        observed = tokens < 2
        f = MIX.log_marginal(tokens.clamp(max=1), observed).float() + 3.0 + self.dummy
        return f + self.shift * observed.sum(1) ** 2  # a perturbation that breaks consistency


class _ExactConditional(torch.nn.Module):
    """logits log p(x_S, x_i = v) at every position i (the denoiser's interface)."""

    def forward(self, tokens):
        observed = tokens < 2
        out = []
        for i in range(tokens.shape[1]):
            col = []
            for v in (0, 1):
                x = tokens.clamp(max=1).clone()
                x[:, i] = v
                obs = observed.clone()
                obs[:, i] = True
                col.append(MIX.log_marginal(x, obs))
            out.append(torch.stack(col, -1))
        return torch.stack(out, 1).float()


def test_self_consistency_vanishes_for_exact_marginals_only():
    x = MIX.sample(500, torch.Generator().manual_seed(1))
    loss = mam.SelfConsistency(_ExactConditional(), 2)
    assert loss(_ExactMarginal(), x, torch.Generator().manual_seed(2)).loss.item() < 1e-9
    assert loss(_ExactMarginal(shift=0.1), x, torch.Generator().manual_seed(2)).loss.item() > 1e-3
    observed = torch.rand(500, 4, generator=torch.Generator().manual_seed(3)) < 0.5
    lp, calls = mam.chain_rule_log_marginal(_ExactConditional(), x, observed, 2)
    assert torch.allclose(lp.double(), MIX.log_marginal(x, observed), atol=1e-5) and calls <= 4


def test_marginal_network_is_normalised_at_the_empty_set():
    f = mam.MarginalMLP(4, 2, width=16, layers=1)
    with torch.no_grad():
        assert f.log_marginal(torch.full((3, 4), 2)).abs().max() < 1e-6


# -- bad inputs -----------------------------------------------------------------------------

def test_bad_inputs_are_rejected():
    causal = _model(vocab=4, length=3, causal=True)
    bidir = _model(vocab=4, length=3)
    with pytest.raises(ValueError, match="int64"):
        causal(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="0..3"):
        causal(torch.full((2, 3), 4))
    with pytest.raises(ValueError, match="causal"):
        bidir(torch.zeros(2, 1, dtype=torch.long), cache=bidir.new_cache(2))
    with pytest.raises(ValueError, match="exceed length"):
        causal(torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="time_input"):
        bidir(torch.zeros(2, 3, dtype=torch.long), t=torch.zeros(2))
    with pytest.raises(ValueError, match="divisible"):
        TokenTransformer(4, 3, dim=10, heads=3)
    with pytest.raises(ValueError, match="steps"):
        md.sample_masked(bidir, 2, 3, 3, 0, torch.Generator())
    with pytest.raises(ValueError, match="classes"):
        md.MaskedDiffusion(1)
    with pytest.raises(ValueError):
        un.UniformDiffusion(3, 0)
    with pytest.raises(ValueError, match="temperature"):
        ar.sample_autoregressive(causal, 2, torch.Generator(), temperature=0.0)
    with pytest.raises(ValueError, match="lengths"):
        serve_inflight(causal, [4], 2)
    with pytest.raises(ValueError, match="batch"):
        serve_static(causal, [2], 0)
    with pytest.raises(ValueError, match="inside"):
        mam.BernoulliMixture(torch.ones(2), torch.tensor([[0.5, 1.0], [0.2, 0.3]]))
    assert math.isfinite(md.exact_masked_nelbo(bidir, ALL[:2], 3).sum().item())
