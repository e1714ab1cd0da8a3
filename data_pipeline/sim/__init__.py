"""Simulators shared by the dataset generators and the evaluation harness.

`babyai`: BabyAI environments as the datasets record them (views, proprio, seeds, the expert bot);
`metaworld`: Meta-World v3 simulation, scripted experts, rendering and phase labels. Both the
generators (`data_pipeline.generators`) and the evaluation (`hilam_jax.evaluation`) import these,
so the evaluation renders exactly as the generator did without depending on the generators.
"""
