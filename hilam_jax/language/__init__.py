"""Language instruction encoders: a pluggable `LanguageEncoder` interface, a per-string cache and a
name-keyed factory ("minilm": all-MiniLM-L6-v2 in Flax, the default; "hash": a test stand-in).

`minilm`'s tokenizers and safetensors are imported only when a MiniLM encoder is built.
"""
from hilam_jax.language import base
from hilam_jax.language import encoder
from hilam_jax.language.base import LanguageEncoder
from hilam_jax.language.encoder import CachedEncoder
from hilam_jax.language.encoder import HashEncoder
from hilam_jax.language.encoder import make_encoder
from hilam_jax.language.encoder import register_encoder
