"""minigen: a notebook-first workbook of generative modelling.

The package is laid out by the five parts of the recipe and by family (book/design.md):

    recipe/     the five parts every continuous paradigm is made of: couplings, paths,
                time samplers, objectives, ODE and SDE solvers, likelihood, model wrappers
    diffusion/  DDPM and its bound, denoising score matching, PFGM++
    transport/  transports between two arbitrary distributions: rectified flow and reflow,
                stochastic interpolants, generator matching
    flows/      normalizing flows (exact likelihood, exact inverse)
    latent/     latent-variable models: the VAE, the autoencoder and latent standardisation
    sampling/   fast sampling of a trained flow: BOSS step sizes, FlowTurbo, blockwise networks
    onestep/    one- and few-step models: MeanFlow, flow maps and consistency, distillation
    control/    guidance and control of a trained model
    discrete/   discrete and autoregressive models
    gflownets/  generative flow networks
    nets/       networks called as ``model(x, t, cond=None)``; no paradigm
    data/       toy 2D samplers and small image sets, offline
    eval/       metrics (W2, MMD, path energy), classifier Fréchet distance, bits/dim and
                decoders, Gaussian closed forms
    workbook/   recording results, the batch runner, plots
    train.py    the one training loop
    broadcast.py  time-broadcast helpers shared by every part

Layering: ``recipe/`` imports no family folder; ``nets/`` and ``data/`` import no paradigm;
nothing imports ``workbook/`` but notebooks, benchmarks and ``eval.fd``'s cache path
(``tests/test_layout.py`` enforces it). Nothing is re-exported: import a name from the module
that defines it.
"""

__version__ = "0.1.0"
