"""UniSkill's pretrained models in Flax, behind the frozen-dynamics-model interface.

  idm                     UniSkill's inverse dynamics model (RGB + depth -> 64-d skill z).
  fdm                     Its diffusion forward dynamics model (UNet + Stable Diffusion VAE).
  depth_anything          Depth-Anything-V2-Small, the IDM's depth input.
  dynamics                `UniSkillDynamics`: the three as a `FrozenDynamicsModel`, and
                          `convert_release` (the released PyTorch files -> a converted directory).
  convert, fdm_convert, depth_anything_convert
                          The converters of the released weights (safetensors read as numpy;
                          `convert` imports torch lazily to read idm.pth, nothing else does).

Nothing is imported here: each module is imported by its full path.
"""
