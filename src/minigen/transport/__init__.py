"""Transports between two arbitrary distributions, built on the recipe's CFM.

    rectified.py           rectified flow, reflow (model-induced coupling), distillation, the
                           transport-cost identity, first-order (DDIM) sampling of any path
    interpolants.py        stochastic interpolants: gamma(t) z, the denoiser, the ODE/SDE family
    generator_matching.py  generator matching in 1D: flow, jump and their superposition

Named "transport" rather than "flows" so that ``flows/`` can hold normalizing flows.
"""
