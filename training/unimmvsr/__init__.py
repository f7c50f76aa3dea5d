"""UniMMVSR trainer: data, degradations, reference augmentation, model wrapper and training loop."""
