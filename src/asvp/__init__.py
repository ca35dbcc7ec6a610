"""asvp-flow: efficient active learning on pre-trained vision models (ASVP, Wen et al.)."""

__version__ = "0.1.0"
