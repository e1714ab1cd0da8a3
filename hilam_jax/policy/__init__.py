"""The hierarchical policy: BAKU networks (both HiLAM levels), their heads, losses and
test-time temporal aggregation of action chunks."""
from hilam_jax.policy.aggregation import TemporalEnsembler
from hilam_jax.policy.baku import (BakuConfig, BakuPolicy, PolicyOutput, count_params,
                                   init_params)
from hilam_jax.policy.heads import HeadConfig, PolicyHead, head_loss, heads_loss

__all__ = ["BakuConfig", "BakuPolicy", "HeadConfig", "PolicyHead", "PolicyOutput",
           "TemporalEnsembler", "count_params", "head_loss", "heads_loss", "init_params"]
