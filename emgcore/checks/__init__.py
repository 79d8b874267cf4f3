"""Real-signal checks: the recipes trained on the real data sets in ``../shared/data``."""
