"""Figures of merit.

    metrics.py   exact W2, MMD, sliced W2, path energy, straightness, W2 against solver steps
    fd.py        the cached MNIST classifier, Fréchet distance, k-NN precision / recall
    bits.py      bits/dim, the per-pixel baseline, discretized-Gaussian and grey-level decoders
    flops.py     network FLOPs per call and per sample (equal-compute comparisons)
    gaussian.py  closed forms for a Gaussian target: marginals, posterior means, score, velocity
"""
