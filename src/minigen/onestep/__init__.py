"""One-step and few-step generators: average velocities and two-time flow maps (chapter 10).

    flow_map.py     X_{t->r}(x) = x + (r - t) u(x, t, r), the few-step sampler, (t, r) pairs,
                    consistency training and consistency distillation
    meanflow.py     MeanFlow: the average-velocity identity with a JVP target, adaptive
                    weighting, guidance folded into the target
    data_free.py    flow map distillation from prior samples only, and its data-based twin
    dispersive.py   the dispersive regulariser (InfoNCE without positives) on features (DM1)
    actions.py      a toy multi-modal observation -> action task (success rate, mode coverage)
    twinflow.py     a toy self-adversarial one-step flow (TwinFlow's idea, no teacher, no discriminator)
    gaussian.py     the linear path's Gaussian-to-Gaussian velocity and flow map in closed form
"""
