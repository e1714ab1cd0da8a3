"""Closed-loop policy evaluation in the simulators (BabyAI, Meta-World, LIBERO).

Modules: `policy_api` (the `Policy` protocol and observation preprocessing shared with the
training data), `stats` (success rate, Wilson interval, `EvalResult`), `babyai` (in-process,
batched minigrid envs), `metaworld` and `libero` (spawned simulator workers stepped in lockstep;
they never import TensorFlow), `video` (GIF rollouts).

Nothing here imports TensorFlow or JAX: policies bring their own.
"""
