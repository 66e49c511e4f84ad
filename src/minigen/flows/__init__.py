"""Normalizing flows: invertible maps with an exact likelihood (chapter 07).

    invertible.py   the layer protocol (x -> (z, log|det|), and the inverse), composition, the
                    flow on a standard normal base (log_prob, loss, sample)
    actnorm.py      Glow's activation normalisation (data-dependent initialisation)
    logit.py        RealNVP's logit preprocessing of the [-1, 1] box, with its log-determinant
    mixing.py       the channel reversal and the LU-parametrised invertible 1x1 convolution
    coupling.py     RealNVP's affine coupling, its masks and conditioners
    multiscale.py   squeeze, factor-out, multiscale image flows and the vector flow
    tarflow.py      TARFlow's causal-transformer affine autoregressive blocks, the image flow
    jacobi.py       Jacobi (fixed-point) iteration for inverting a causal map in parallel
    guidance.py     classifier-free guidance as a product of per-token Gaussians (STARFlow)
    denoise.py      one-step score denoising through the flow's own log-density (Tweedie)
    bayes.py        a class-conditional flow as a Bayes classifier
"""
