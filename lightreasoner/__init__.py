"""LightReasoner: small models teach large models to reason (Wang et al., arXiv 2510.07962)."""

__version__ = "0.1.0"
