"""Research on drafter selection: the simulator, the replay of recorded drafts and the
experiment grids that chose `spin`'s algorithm and defaults, and the variants of `spin` they
compared it with. These import `spinserve.selection` and are never imported by it; the policy
the server runs is `spinserve.selection.spin`, and only its knobs are `SpinParams`.

- `workloads`: the simulated world (hardware cost profiles, drafter skills, request types);
- `simulate`: a closed loop of simulated requests under a policy, with oracles and regret;
- `experiments`: the policies compared and the tables printed
  (``python -m research.selection.experiments``);
- `replay`: policies replayed exactly on drafts recorded from the real drafters
  (``benchmarks/selection_trace.py``);
- `variants`: `spin` with the alternatives it was measured against (other exploration rules,
  streaks, a cap after a rejection, exploring under load, no shared prior), and
  `flat_arms` with `estimators`: every drafter x k its own arm, with Gaussian beliefs.
"""
