"""Generative flow networks on the hypergrid, checked against enumeration (chapter 15).

    hypergrid.py      the environment: states {0..H-1}^D, increment or stop, the standard reward,
                      masks, the one-hot encoding, the 2^D modes
    exact.py          R/Z and log Z by enumeration; the balanced flows of the uniform backward
                      policy by dynamic programming; a policy's exact terminal distribution;
                      L1 (summed over states) and the sampling floor
    policy.py         the policy MLP (forward logits, optional backward logits, log flow, log Z),
                      a tabular GFlowNet, batched masked rollouts, the per-step terms of a batch
    balance.py        detailed, trajectory and sub-trajectory balance as sums of one residual;
                      the forward-looking flow (FL-DB) and truncation to incomplete trajectories
    flow_matching.py  flow matching on edge flows (in-flow = out-flow, stop edge = reward)
    train.py          the on-policy training loop with exact-L1 and modes-found curves, the loss
                      dispatcher, empirical L1 of sampled states, the model's log Z
    outcome.py        outcome-conditioned GFlowNets: reward-free pre-training with hindsight,
                      a policy for a new reward by marginalising over outcomes
    order.py          order-preserving GFlowNets: a learned reward fitted to pairwise
                      comparisons, trajectory balance on it
"""
