"""Discrete and autoregressive models of token sequences (chapter 14).

    autoregressive.py    the exact chain-rule likelihood, sampling with and without a KV cache
    batching.py          serving requests of different lengths: static vs in-flight batching (Flover)
    masked.py            masked (absorbing) diffusion: continuous-time and T-step NELBO, the exact
                         any-order likelihood for tiny cases, few-step sampling
    uniform.py           D3PM with uniform noise: posterior, x0-parametrised reverse step, NELBO
    rvq.py               residual vector quantisation of image patches by residual k-means
    resgen.py            masked diffusion over RVQ stacks predicting collective vectors (ResGen)
    marginalization.py   marginalization models: one network for every marginal (MaM), a toy
                         Bernoulli mixture with exact marginals
"""
