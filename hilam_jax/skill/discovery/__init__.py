"""Skill-discovery metrics: do the skill model's boundaries find the ground-truth subtask starts?

The paper reports no quantitative skill-discovery metric (METHOD.md section 5); this module adds
two on datasets with ground truth (`subtask/boundary` and `extras/subtask_name` of the BabyAI and
Meta-World generators).

1. Boundary precision / recall / F1 with a tolerance: a predicted boundary at t and a true one at
u match if |t - u| <= tolerance; matching is one-to-one and greedy (closest pairs first, ties to
the earlier frames), so two predictions near one true boundary count once. Frame 0 is a boundary
by construction on both sides (every sequence starts a chunk, every episode starts a subtask) and
is ignored. Counts are summed over episodes before dividing (micro average).

2. A linear probe (multinomial logistic regression, `fit_linear_probe`) from per-frame features
(z̄^1, z̄^2, z^0, a trailing window mean of z^0) to the ground-truth subtask identity of the
frame, at two granularities: "target" (`subtask_target`: the subgoal without colours and
locations, e.g. BabyAI "GoNextTo(door, Open)", "GoNextTo(ball)", "Pickup"; Meta-World: the expert
phase) and "type" (`subtask_type`: "GoNextTo", "Pickup", "Drop", "Open"). On BossLevel the
Pickup / Drop / Open subgoals last 1-2 frames (one bot action) and GoNextTo ~40, so balanced
accuracy (mean per-class recall) is reported beside accuracy.

Held-out protocol (`run_evaluation`). The generator's held-out episodes (split `val` of the
dataset) are divided by a hash of their episode id (`data_pipeline.episode_split.heldout_split`:
sha256 parity) into a *validation* half and a *test* half. Every choice is made on the validation
half: the baselines' free parameter (chunk length, delta threshold, change-point penalty) is set
there to hit a boundary budget, and the probe is fit there. Reported figures come from the test half, which no
choice looked at. The study (`experiments/skill_study.py`) picks the model's settings on the
validation F1 as well.

Baselines, each at two budgets fixed on the validation half: the model's own boundary rate for
the stage (so model and baseline place as many boundaries) and the ground-truth rate (what a
segmenter told the true number of subtasks would do):
  fixed_length     boundaries every `mean chunk length` frames (at round(i * length), i >= 1);
  latent_delta     boundaries where ||z_t - z_{t-1}|| exceeds a threshold (a quantile over all
                   frames t >= 1 of the validation episodes);
  ruptures_binseg  binary segmentation of each episode's z^0 [T, Dz] with the l2 cost
                   (`ruptures`, min_size 1), one penalty for all episodes;
  ruptures_pelt    PELT with the same cost and penalty rule.

Frames are those of the latent actions (t < T - k): ground truth beyond them is dropped.

Modules:
  boundaries     boundary matching (P/R/F1 with a tolerance), chunk lengths, boundary rates
  baselines      fixed length, latent delta and ruptures change points; penalty calibration
  stages         one stage against the baselines at a budget (`evaluate_stage_heldout`)
  ceilings       oracle-count segmentations (exact l2 optimum, Binseg, top change, evenly spaced)
  subtask_probe  subtask labels of frames and the linear probes to them (`probe_report`)
  summary        mean ± std over seeds and the markdown tables
  inputs         ground truth, frames and skill folders as read from disk
  filmstrips     PNG filmstrips of boundaries (`skill_filmstrips` for any video dataset)
  evaluate       the jobs: `run_evaluation`, `run_ceilings` (re-exported here)
"""
from hilam_jax.skill.discovery.evaluate import run_ceilings, run_evaluation
from hilam_jax.skill.discovery.filmstrips import skill_filmstrips

__all__ = ["run_ceilings", "run_evaluation", "skill_filmstrips"]
