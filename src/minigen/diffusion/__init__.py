"""Diffusion models: the variational, score and Poisson-field views.

    ddpm.py            DDPM's discrete schedule, posterior, ancestral and DDIM samplers, L_simple / L_vlb
    ddpm_bound.py      the variational bound term by term, fitted variances and decoders
    score_matching.py  denoising score matching (variance / likelihood weighting), the
                       probability-flow likelihood, the decoded codelength, Tweedie's denoiser
    pfgmpp.py          PFGM++: the N+D-dimensional kernel, EDM's denoiser, loss and Heun sampler
"""
