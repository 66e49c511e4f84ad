"""Fast sampling of a trained flow (chapter 09): where the steps go, what a step costs, and which
network a step calls. The solvers themselves (Euler .. RK4, dopri5, DDIM, DPM-Solver, the
time grids) are part 4 of the recipe, in ``minigen.recipe``.

    boss.py       Bellman Optimal Step-size Straightening: K Euler steps chosen by dynamic
                  programming over a fine grid of one-jump errors
    flowturbo.py  FlowTurbo: the pseudo corrector (Heun at ~1 NFE per step) and a lightweight
                  velocity refiner that corrects a cached velocity
    blockwise.py  Blockwise flow matching: one smaller velocity network per segment of [0, 1]
"""
