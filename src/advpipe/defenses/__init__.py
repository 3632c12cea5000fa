"""Defenses: the defense model (frozen trunk + head), the shared training loop, one
module per method (adversarial training, Deep Defense) and their evaluation."""
