"""Evaluation: probes and retrieval, the papers' tables and figures, EMG-JEPA's low-channel
study."""
