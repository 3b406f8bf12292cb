"""SI-BeatGAN: ECG anomaly detection training pipeline (BeatGAN teacher, self-distilled contrastive student)."""

__version__ = "0.1.0"
