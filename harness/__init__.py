"""harness: PGD adversarial training and evaluation per the paper's protocol."""

__version__ = "0.1.0"
